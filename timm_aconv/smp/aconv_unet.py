"""``aconv_unet``: SMP's U-Net with the paper's adaptive first convolution

The paper's segmentation experiment replaced the first convolution of a U-Net by a 7×7 adaptive
layer and left the rest ordinary. :class:`AconvUnet` is :class:`segmentation_models_pytorch.Unet`
(every encoder, every Unet argument) with that surgery, and arguments to choose the grid size and
which layers become adaptive:

    >>> model = smp.create_model('aconv_unet', encoder_name='resnet34', encoder_weights=None, classes=3)
    >>> [name for name, _ in timm_aconv.named_adaptive_layers(model)]
    ['encoder.conv1']

With pretrained encoder weights the chosen layers are converted function-preservingly (the
pretrained stem's response is kept, sigma starts at 0.5); with ``encoder_weights=None`` they are
fresh adaptive layers with the paper's apertures.

The paper's ordinary baselines are the same network with ``adaptive=None`` (no adaptive layer)
and ``first_conv_kernel_size`` for the first convolution's size (the CONV 3×3 U-Net):

    >>> model = smp.create_model('aconv_unet', encoder_name='resnet18', encoder_weights=None, classes=3,
    ...                          adaptive=None, first_conv_kernel_size=3)
    >>> model.encoder.conv1
    Conv2d(3, 64, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)

Both are arguments of the constructor, so ``save_pretrained`` / ``smp.from_pretrained`` rebuild
such a model.
"""

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from segmentation_models_pytorch import Unet

from ..layers import AdaptiveConv2d
from ..layers.covariance import SigmaInit
from ..surgery import convert_convs
from ..surgery.module_tree import replace_modules
from ._smp_internals import supports_config_loading
from .model_card import TimmAconvModelCard

__all__ = ['PAPER_UNET_SIGMA_BOUNDS', 'PAPER_UNET_SIGMA_INIT', 'AconvUnet']

# the authors' U-Net setting (their code): apertures (0.1, 0.25), clamped to [1/7, 5]
PAPER_UNET_SIGMA_INIT = (0.1, 0.25)
PAPER_UNET_SIGMA_BOUNDS = (1 / 7, 5.0)

ADAPTIVE_CHOICES = ('first', 'encoder')


def _first_conv(encoder: nn.Module) -> Tuple[str, nn.Conv2d]:
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f'encoder.{name}', module
    raise ValueError(f'aconv_unet: encoder {type(encoder).__name__} has no nn.Conv2d')


def _resize_first_conv(model: Unet, kernel_size: int) -> None:
    """The encoder's first convolution as an ordinary ``kernel_size`` one: same channels, stride,
    dilation and bias, padding that keeps the output size, ``nn.Conv2d``'s initialization."""
    name, conv = _first_conv(model.encoder)
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f'aconv_unet: first_conv_kernel_size must be an odd positive integer (e.g. 3, 7) or None, '
            f'got {kernel_size!r}'
        )
    if isinstance(conv, AdaptiveConv2d):
        raise ValueError(
            f'aconv_unet: first_conv_kernel_size resizes an ordinary first convolution, but {name} of '
            f'encoder {type(model.encoder).__name__} is adaptive; use adaptive_kernel_size'
        )
    if conv.kernel_size == (kernel_size, kernel_size):
        return
    resized = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size,
        stride=conv.stride,
        padding=conv.dilation[0] * (kernel_size - 1) // 2,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    replace_modules(model, {conv: resized})


def _adaptive_patterns(model: Unet, adaptive: Union[str, Sequence[str]]) -> Tuple[List[str], bool]:
    """The fnmatch patterns of the layers ``adaptive`` names, and whether 1×1 convs are skipped."""
    if adaptive == 'first':
        return [_first_conv(model.encoder)[0]], False
    if adaptive == 'encoder':
        return ['encoder.*'], True
    if isinstance(adaptive, str) or not adaptive or not all(isinstance(p, str) for p in adaptive):
        raise ValueError(
            f'aconv_unet: adaptive must be one of {ADAPTIVE_CHOICES}, None or a non-empty list of fnmatch patterns '
            f"on module names (e.g. ['encoder.conv1', 'encoder.layer1.*']), got {adaptive!r}"
        )
    return list(adaptive), True


class AconvUnet(TimmAconvModelCard, Unet):
    """:class:`segmentation_models_pytorch.Unet` with adaptive convolutions (the paper's U-Net setup).

    Args:
        encoder_name ... aux_params, **kwargs: as :class:`segmentation_models_pytorch.Unet`.
        adaptive_kernel_size: grid size n of the adaptive layers (the paper: 7).
        adaptive: which convolutions become adaptive: ``'first'`` (default, the paper: the
            encoder's first convolution, whatever its kernel size), ``'encoder'`` (every
            spatial, i.e. non-1×1, encoder convolution), a list of fnmatch patterns on the
            model's module names (e.g. ``['encoder.conv1', 'decoder.blocks.0.*']``), or None
            (none: the ordinary baselines).
        first_conv_kernel_size: kernel size of the encoder's first convolution, made an ordinary
            convolution of that size (same stride, output size kept, freshly initialized: pretrained
            weights of a resized first convolution are not kept) before any layer becomes adaptive;
            None keeps the encoder's (ResNets: 7). The paper's CONV 3×3 baseline:
            ``adaptive=None, first_conv_kernel_size=3``.
        sigma_init: apertures of the adaptive layers; None is the paper's (0.1, 0.25) for a
            randomly initialized encoder and the function-preserving 0.5 for pretrained weights.
        sigma_bounds: clamp range (the authors' U-Net: [1/7, 5]).
        covariance_type: the envelope of the adaptive layers: 'spherical' (default, the paper's), 'diag' or
            'full' (:mod:`timm_aconv.layers.covariance`).

    Layers that are adaptive already (an ``aconv_`` encoder's) are kept as they are.
    """

    @supports_config_loading
    def __init__(
        self,
        encoder_name: str = 'resnet34',
        encoder_depth: int = 5,
        encoder_weights: Optional[str] = 'imagenet',
        decoder_use_norm: Union[bool, str, dict] = 'batchnorm',
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_attention_type: Optional[str] = None,
        decoder_interpolation: str = 'nearest',
        in_channels: int = 3,
        classes: int = 1,
        activation: Optional[str] = None,
        aux_params: Optional[dict] = None,
        adaptive_kernel_size: int = 7,
        adaptive: Union[str, Sequence[str], None] = 'first',
        first_conv_kernel_size: Optional[int] = None,
        sigma_init: Optional[SigmaInit] = None,
        sigma_bounds: Tuple[float, float] = PAPER_UNET_SIGMA_BOUNDS,
        covariance_type: str = 'spherical',
        **kwargs: Any,
    ):
        super().__init__(
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            decoder_use_norm=decoder_use_norm,
            decoder_channels=decoder_channels,
            decoder_attention_type=decoder_attention_type,
            decoder_interpolation=decoder_interpolation,
            in_channels=in_channels,
            classes=classes,
            activation=activation,
            aux_params=aux_params,
            **kwargs,
        )
        if first_conv_kernel_size is not None:
            _resize_first_conv(self, first_conv_kernel_size)
        if adaptive is not None:
            patterns, skip_pointwise = _adaptive_patterns(self, adaptive)
            pretrained = encoder_weights is not None
            if sigma_init is None and not pretrained:
                sigma_init = PAPER_UNET_SIGMA_INIT
            convert_convs(
                self,
                sizes=adaptive_kernel_size,
                include=patterns,
                preserve=pretrained,
                sigma_init=sigma_init,
                sigma_bounds=sigma_bounds,
                skip_pointwise=skip_pointwise,
                covariance_type=covariance_type,
            )
        self.name = f'{"aconv" if adaptive is not None else "conv"}-u-{encoder_name}'
