"""timm's ImageNet ResNets with adaptive spatial convolutions

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.).

``aconv_resnet18`` ... ``aconv_resnet152`` are timm's own :class:`~timm.models.ResNet`
architectures whose spatial convolutions are :class:`~timm_aconv.AdaptiveConv2d`: the 3×3 block
convolutions get an n×n base grid (``kernel_size``, default 5) and the 7×7 stem stays 7×7
(``stem_kernel_size``) but becomes adaptive; 1×1 convolutions stay ordinary.

``pretrained=True`` loads timm's ImageNet weights of the same ResNet (the pretrained cfgs point
at timm's, e.g. ``timm/resnet34.a1_in1k``) through timm's usual hub / url / file mechanism and
converts them as ``convert_convs(..., preserve=True)`` does: each k×k kernel is centred in its
n×n grid and divided by the envelope there, so the adaptive model starts with the original
model's exact predictions. Checkpoints of the adaptive models themselves (with ``sigma``) load
unchanged::

    >>> model = timm.create_model('aconv_resnet34', pretrained=True)   # == resnet34's logits
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import ResNet, build_model_with_cfg, generate_default_cfgs, get_arch_pretrained_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck

from ..layers.covariance import SigmaInit, resolve_kernel_size
from ..surgery import adapt_ordinary_weights, convert_convs
from ..surgery.convert import PRESERVE_SIGMA_INIT

__all__ = ['adaptive_resnet', 'convert_pretrained_resnet']

STEM = 'conv1'


def adaptive_resnet(
    kernel_size: int = 5,
    stem_kernel_size: int = 7,
    sigma_init: Optional[SigmaInit] = None,
    sigma_bounds: Optional[Tuple[float, float]] = None,
    covariance_type: str = 'spherical',
    **kwargs,
) -> ResNet:
    """A timm :class:`~timm.models.ResNet` (built from ``kwargs``) with adaptive spatial convolutions.

    Args:
        kernel_size: base grid n of the block convolutions (3×3 in timm's ResNet), odd >= 3.
        stem_kernel_size: base grid of the 7×7 stem convolution, odd >= 3.
        sigma_init: initial apertures; None: the paper's (0.1, 0.5) spread over each layer's filters.
        sigma_bounds: clamp range of sigma, None for the paper's (1/n, n).
        covariance_type: the envelope of the adaptive layers: 'spherical' (default, the paper's), 'diag' or
            'full' (:mod:`timm_aconv.layers.covariance`).
        **kwargs: :class:`~timm.models.ResNet` arguments.

    The adaptive layers start from timm's ResNet initialization (He-normal, fan-out) on their
    full n×n grid.
    """
    kernel_size = resolve_kernel_size(kernel_size, name='kernel_size')
    stem_kernel_size = resolve_kernel_size(stem_kernel_size, name='stem_kernel_size')
    model = ResNet(**kwargs)
    convert = dict(preserve=False, sigma_init=sigma_init, sigma_bounds=sigma_bounds, covariance_type=covariance_type)
    convert_convs(model, sizes=stem_kernel_size, include=[STEM], **convert)
    convert_convs(model, sizes=kernel_size, exclude=[STEM], **convert)
    model.init_weights(zero_init_last=kwargs.get('zero_init_last', True))
    return model


def convert_pretrained_resnet(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ResNet weights → the adaptive model's (a ``pretrained_filter_fn``), keeping the function.

    Ordinary k×k kernels are converted with each layer's own grid, ``sigma_init`` and
    ``sigma_bounds`` (see :func:`~timm_aconv.surgery.adapt_ordinary_weights`); adaptive checkpoints pass.
    """
    return adapt_ordinary_weights(model, dict(state_dict))


def _create_aconv_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    if pretrained:
        # a wide envelope divides the pretrained kernels mildly (see convert_convs)
        kwargs.setdefault('sigma_init', PRESERVE_SIGMA_INIT)
    return build_model_with_cfg(
        adaptive_resnet, variant, pretrained, pretrained_filter_fn=convert_pretrained_resnet, **kwargs
    )


ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
# every pretrained tag of timm's ResNet, pointing at timm's weights (hf_hub_id / url unchanged)
default_cfgs = generate_default_cfgs(
    {f'aconv_{name}': cfg for arch in ARCHS for name, cfg in get_arch_pretrained_cfgs(arch).items()}
)


@register_model
def aconv_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 with adaptive convolutions (5×5 grids in the blocks, adaptive 7×7 stem)"""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_aconv_resnet('aconv_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-34 with adaptive convolutions (5×5 grids in the blocks, adaptive 7×7 stem)"""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_aconv_resnet('aconv_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50 with adaptive convolutions (5×5 grids in the blocks, adaptive 7×7 stem)"""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_aconv_resnet('aconv_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101 with adaptive convolutions (5×5 grids in the blocks, adaptive 7×7 stem)"""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_aconv_resnet('aconv_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-152 with adaptive convolutions (5×5 grids in the blocks, adaptive 7×7 stem)"""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_aconv_resnet('aconv_resnet152', pretrained, **dict(model_args, **kwargs))
