"""Deployment: adaptive layers → plain ``nn.Conv2d`` holding the product kernel

The product kernel ``W ∘ U`` is an ordinary convolution kernel, so a trained adaptive model
runs as a plain CNN. Where the learned envelopes leave little energy near the grid's border,
``crop_tol`` crops the fused kernel to a smaller centred window (with padding reduced to keep
every output in place) for a faster layer.
"""

import warnings
from typing import Optional

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConv2d, plain_conv_like
from ..layers.adaptive_conv_nd import AdaptiveConvNd
from ..layers.envelope import centre_energy_fraction
from ..layers.window import explicit_padding
from .module_tree import replace_modules

__all__ = ['crop_conv', 'fuse_convs']


def crop_conv(conv: nn.Conv2d, crop_tol: float) -> nn.Conv2d:
    """``conv`` with its (odd, square) kernel cropped to the smallest centred window that keeps
    all but ``crop_tol`` of the kernel's energy (sum of squares over all filters).

    Padding shrinks by ``dilation * (n - m) / 2`` so output shape and alignment are unchanged;
    the window never shrinks past what the layer's padding allows.
    """
    if not 0.0 <= crop_tol < 1.0:
        raise ValueError(f'crop_tol must be in [0, 1), got {crop_tol}')
    n = conv.kernel_size[0]
    if conv.kernel_size[1] != n or n % 2 == 0 or (isinstance(conv.padding, str) and conv.padding != 'same'):
        return conv
    padding = explicit_padding(conv)
    # each side can lose at most padding // dilation taps without moving the outputs
    max_shrink = min(p // d for p, d in zip(padding, conv.dilation))
    fractions = centre_energy_fraction(conv.weight)
    radius = next(r for r, fraction in enumerate(fractions) if fraction >= 1.0 - crop_tol - 1e-12)
    radius = max(radius, n // 2 - max_shrink)
    size = 2 * radius + 1
    if size == n:
        return conv
    trim = (n - size) // 2
    padding = tuple(p - d * trim for p, d in zip(padding, conv.dilation))
    with torch.no_grad():
        return plain_conv_like(conv, conv.weight[:, :, trim : trim + size, trim : trim + size], padding)


def fuse_convs(model: nn.Module, crop_tol: Optional[float] = None, strict: bool = False) -> nn.Module:
    """Replace every :class:`AdaptiveConv2d` in ``model`` by an ``nn.Conv2d`` (and every 1-D / 3-D adaptive
    layer by its plain layer), in place.

    Args:
        model: a model with adaptive layers (a bare adaptive layer is returned fused).
        crop_tol: None keeps the n×n size (outputs equal up to float rounding); a value in
            [0, 1) crops each fused kernel as :func:`crop_conv` does.
        strict: raise a ValueError instead of warning when ``model`` holds no adaptive layer
            (fused already, or never converted: a second call is usually a mistake).

    Returns:
        ``model`` (or the fused layer when ``model`` itself is adaptive).
    """
    if crop_tol is not None and not 0.0 <= crop_tol < 1.0:
        raise ValueError(f'crop_tol must be None or in [0, 1), got {crop_tol}')
    replacements = {}
    for module in model.modules():
        if isinstance(module, AdaptiveConvNd) and module not in replacements:
            if crop_tol is not None:
                raise ValueError(
                    f'fuse_convs: crop_tol crops 2-D adaptive layers only (not built yet for '
                    f'{type(module).__name__}); fuse with crop_tol=None'
                )
            replacements[module] = module.fuse()
        if isinstance(module, AdaptiveConv2d) and module not in replacements:
            fused = module.fuse()
            replacements[module] = fused if crop_tol is None else crop_conv(fused, crop_tol)
    if not replacements:
        message = (
            f'fuse_convs: {type(model).__name__} has no adaptive layer to fuse (fused already, or '
            f'never converted); the model is returned unchanged'
        )
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
        return model
    return replace_modules(model, replacements)
