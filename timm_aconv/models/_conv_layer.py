"""Convolution factory shared by the twin (CONV / ACONV) model families

The paper compares an ordinary network with the same network whose convolutions are
adaptive. Both twins are built by one model class that asks :func:`create_conv_layer` for
its k×k convolutions, so their architectures differ only in the layer type (and the one
``sigma`` per adaptive filter).
"""

from functools import partial
from typing import Callable, Optional, Tuple

import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConv2d
from ..layers.covariance import SigmaInit, resolve_kernel_size

__all__ = ['ConvLayer', 'create_conv_layer']

# conv_layer(in_chs, out_chs, stride=1) -> a k×k convolution, 'same' padding for stride 1, no bias
ConvLayer = Callable[..., nn.Conv2d]


def create_conv_layer(
    adaptive: bool,
    kernel_size: int,
    sigma_init: SigmaInit = (0.1, 0.5),
    sigma_bounds: Optional[Tuple[float, float]] = None,
    bias: bool = False,
    covariance_type: str = 'spherical',
) -> ConvLayer:
    """A factory of k×k convolutions: :class:`AdaptiveConv2d` when ``adaptive`` else ``nn.Conv2d``.

    Args:
        adaptive: build adaptive layers (ACONV) or ordinary ones (CONV).
        kernel_size: n, the (base-grid) size of every kernel; odd and >= 3.
        sigma_init: initial apertures of adaptive layers (ignored for ordinary ones).
        sigma_bounds: clamp range of adaptive layers, None for the paper's (1/n, n).
        bias: give the convolutions a bias.
        covariance_type: the envelope of adaptive layers ('spherical', 'diag', 'full'; ignored for ordinary ones).

    Returns:
        ``conv_layer(in_chs, out_chs, stride=1)``; padding ``k // 2`` keeps the spatial size at
        stride 1 and gives ``ceil(size / stride)`` otherwise, for both layer types.
    """
    kernel_size = resolve_kernel_size(kernel_size)
    if adaptive:
        return partial(
            _conv,
            AdaptiveConv2d,
            kernel_size=kernel_size,
            bias=bias,
            sigma_init=sigma_init,
            sigma_bounds=sigma_bounds,
            covariance_type=covariance_type,
        )
    return partial(_conv, nn.Conv2d, kernel_size=kernel_size, bias=bias)


def _conv(conv_cls, in_chs: int, out_chs: int, stride: int = 1, *, kernel_size: int, **kwargs) -> nn.Conv2d:
    return conv_cls(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, **kwargs)
