"""Registration of our encoders and architectures with segmentation-models-pytorch

After :func:`register_smp` (run by ``import timm_aconv``):

- ``smp.encoders.encoders`` holds ``aconv_resnet18/34/50``, so every SMP architecture takes them
  as ``encoder_name``;
- ``smp.create_model('aconv_unet', ...)`` builds :class:`AconvUnet` and
  ``smp.create_model('aconv_paper_unet', ...)`` the paper's own network, :class:`PaperUNet`;
- ``smp.AconvUnet`` / ``smp.PaperUNet`` exist, which ``smp.from_pretrained`` needs to find a
  saved model's class by name.
"""

import inspect
from typing import Any, Optional

import segmentation_models_pytorch as smp

from ._smp_internals import ARCHITECTURE_REGISTRY, ENCODER_REGISTRY
from .aconv_unet import AconvUnet
from .encoders import aconv_resnet_encoders
from .paper_unet import PaperUNet

__all__ = ['create_paper_unet', 'register_smp']

# create_model() always passes an encoder name; its default is the only one a model without a
# choice of encoder can accept without ignoring what the user asked for
_CREATE_MODEL_DEFAULT_ENCODER = inspect.signature(smp.create_model).parameters['encoder_name'].default


def create_paper_unet(
    encoder_name: Optional[str] = None,
    encoder_weights: Optional[str] = None,
    in_channels: int = 3,
    classes: int = 3,
    **kwargs: Any,
) -> PaperUNet:
    """``smp.create_model('aconv_paper_unet', encoder_weights=None, ...)``: a :class:`PaperUNet`.

    The paper's network has its own fixed encoder trained from scratch: ``encoder_name`` must be
    left at ``create_model``'s default (or None) and ``encoder_weights`` must be None. Other
    keyword arguments go to :class:`PaperUNet` (``entry_kernel_size``, ``adaptive``, ...).
    """
    if encoder_name not in (None, _CREATE_MODEL_DEFAULT_ENCODER):
        raise ValueError(
            f"aconv_paper_unet has its own fixed encoder (the Keras example's Xception-style one); "
            f"do not pass encoder_name (got {encoder_name!r}). Use arch='aconv_unet' to choose an SMP encoder."
        )
    if encoder_weights is not None:
        raise ValueError(
            f'aconv_paper_unet has no pretrained weights; pass encoder_weights=None (got {encoder_weights!r})'
        )
    return PaperUNet(in_channels=in_channels, classes=classes, **kwargs)


def register_smp() -> None:
    """Add our encoders and architectures to SMP's registries (idempotent)."""
    ENCODER_REGISTRY.update(aconv_resnet_encoders)
    ARCHITECTURE_REGISTRY['aconv_unet'] = AconvUnet
    ARCHITECTURE_REGISTRY['aconv_paper_unet'] = create_paper_unet
    smp.AconvUnet = AconvUnet
    smp.PaperUNet = PaperUNet
