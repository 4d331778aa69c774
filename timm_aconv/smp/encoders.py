"""SMP encoders ``aconv_resnet18/34/50``: ResNet encoders with adaptive spatial convolutions

SMP's own ResNet encoders (``segmentation_models_pytorch.encoders.resnet``) with every spatial
convolution adaptive: the 7×7 stem becomes an adaptive 7×7 layer and each 3×3 convolution an
adaptive 5×5 layer (a grid larger than the kernel it replaces, so filters can grow); 1×1
convolutions (bottleneck projections, downsampling shortcuts) stay ordinary. Fresh layers get the
paper's ResNet apertures, sigma linearly spaced over (0.1, 0.3), clamped to (1/n, n), and
``nn.Conv2d``'s default weight initialization (a batch norm follows every convolution).

Everything SMP does with its encoders keeps working: any ``in_channels`` (SMP's
``patch_first_conv`` edits the adaptive stem's ``weight`` like an ordinary one; sigma is per
output filter and unaffected), ``encoder_depth`` 1–5, ``encoder_output_stride`` 8/16 (SMP sets
``dilation`` and ``padding = dilation * (n - 1) // 2`` on the n×n grid, which keeps the shapes).

Pretrained weights are the ordinary ResNet's (the same ``pretrained_settings`` as SMP's
``resnet18/34/50``): loading an ordinary state dict into these encoders converts it on the way in
with the function-preserving conversion (:func:`adapt_ordinary_weights`), so
``encoder_weights='imagenet'`` starts from exactly the ImageNet ResNet's features.
"""

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from ..layers.covariance import SigmaInit
from ..surgery import adapt_ordinary_weights, convert_convs
from ..surgery.convert import PRESERVE_SIGMA_INIT
from ._smp_internals import ResNetEncoder, resnet_encoders

__all__ = ['AconvResNetEncoder', 'aconv_resnet_encoders']


def _adapt_ordinary_weights_hook(module: nn.Module, state_dict: Dict, prefix: str, *args: Any) -> None:
    adapt_ordinary_weights(module, state_dict, prefix, sigma_init=PRESERVE_SIGMA_INIT)


class AconvResNetEncoder(ResNetEncoder):
    """SMP's :class:`ResNetEncoder` with adaptive spatial convolutions.

    Args:
        out_channels, depth, output_stride, **kwargs: as :class:`ResNetEncoder` (torchvision
            ``ResNet`` arguments: ``block``, ``layers``, ...).
        stem_kernel_size: adaptive grid of the 7×7 stem convolution.
        kernel_size: adaptive grid of the 3×3 convolutions in the residual stages.
        sigma_init: apertures of the fresh adaptive layers (the paper's ResNet setting).
        sigma_bounds: clamp range; None is (1/n, n) per layer.
        covariance_type: the envelope of the adaptive layers: 'spherical' (default, the paper's), 'diag' or
            'full' (:mod:`timm_aconv.layers.covariance`).
    """

    def __init__(
        self,
        out_channels: List[int],
        depth: int = 5,
        output_stride: int = 32,
        stem_kernel_size: int = 7,
        kernel_size: int = 5,
        sigma_init: SigmaInit = (0.1, 0.3),
        sigma_bounds: Optional[Tuple[float, float]] = None,
        covariance_type: str = 'spherical',
        **kwargs: Any,
    ):
        super().__init__(out_channels, depth=depth, output_stride=output_stride, **kwargs)
        adaptive_args = dict(
            preserve=False, sigma_init=sigma_init, sigma_bounds=sigma_bounds, covariance_type=covariance_type
        )
        convert_convs(self, sizes=stem_kernel_size, include=['conv1'], **adaptive_args)
        convert_convs(self, sizes=kernel_size, include=['layer*'], **adaptive_args)
        self.register_load_state_dict_pre_hook(_adapt_ordinary_weights_hook)


def _aconv_encoder_entry(ordinary_name: str) -> Dict[str, Any]:
    """The SMP registry entry of ``aconv_<ordinary_name>``: same stages, same pretrained sources."""
    ordinary = resnet_encoders[ordinary_name]
    return {
        'encoder': AconvResNetEncoder,
        'pretrained_settings': copy.deepcopy(ordinary['pretrained_settings']),
        'params': dict(ordinary['params']),
    }


aconv_resnet_encoders = {
    'aconv_resnet18': _aconv_encoder_entry('resnet18'),
    'aconv_resnet34': _aconv_encoder_entry('resnet34'),
    'aconv_resnet50': _aconv_encoder_entry('resnet50'),
}
