"""segmentation-models-pytorch registrations (imported by ``timm_aconv`` when SMP is installed)

- encoders ``aconv_resnet18/34/50`` (:mod:`.encoders`): SMP ResNet encoders with adaptive
  spatial convolutions; ``encoder_weights='imagenet'`` loads the ordinary ResNet's weights
  converted function-preservingly (:func:`timm_aconv.surgery.adapt_ordinary_weights`);
- architecture ``aconv_unet`` (:mod:`.aconv_unet`): SMP's U-Net with the paper's adaptive 7×7
  first convolution;
- architecture ``aconv_paper_unet`` (:mod:`.paper_unet`): the paper's own Keras-example U-Net.

Both architectures save and reload with SMP's ``save_pretrained`` / ``smp.from_pretrained`` (after
``import timm_aconv``, which their model card's loading example says, :mod:`.model_card`). Any other
SMP model converted with ``convert_convs`` reloads with :func:`.from_pretrained` (:mod:`.pretrained`).
"""

from ..surgery import adapt_ordinary_weights
from .aconv_unet import PAPER_UNET_SIGMA_BOUNDS, PAPER_UNET_SIGMA_INIT, AconvUnet
from .encoders import AconvResNetEncoder, aconv_resnet_encoders
from .paper_unet import PaperUNet
from .pretrained import from_pretrained
from .registry import create_paper_unet, register_smp

__all__ = [
    'PAPER_UNET_SIGMA_BOUNDS',
    'PAPER_UNET_SIGMA_INIT',
    'AconvResNetEncoder',
    'AconvUnet',
    'PaperUNet',
    'aconv_resnet_encoders',
    'adapt_ordinary_weights',
    'create_paper_unet',
    'from_pretrained',
    'register_smp',
]

register_smp()
