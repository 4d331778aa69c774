"""Deployment: adaptive layers → plain convolutions holding the product kernel

The product kernel ``W ∘ U`` is an ordinary convolution kernel, so a trained adaptive model
runs as a plain CNN. Where the learned envelopes leave little energy near the grid's border,
``crop_tol`` crops the fused kernel to a smaller centred window (with padding reduced to keep
every output in place) for a faster layer: a square window for the paper's circular layers, a box
with its own side per axis for every other (elliptic, rectangular, 1-D and 3-D) layer.
"""

import warnings
from typing import Optional

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConvNd, plain_conv_like
from ..layers.window import explicit_padding, smallest_boxes
from .module_tree import replace_modules

__all__ = ['crop_conv', 'fuse_convs']


def crop_conv(conv: nn.Module, crop_tol: float, per_axis: bool = False) -> nn.Module:
    """``conv`` with its (odd) kernel cropped to the smallest centred window that keeps all but
    ``crop_tol`` of the kernel's energy (sum of squares over all filters).

    ``per_axis=False``: a square (cubic) window of a kernel whose sides are equal (other kernels are returned as
    they are); ``per_axis=True``: a box with its own odd side per axis, for any odd kernel sides
    (:func:`~timm_aconv.layers.window.smallest_boxes`). A convolution of any dimension.
    Padding shrinks by ``dilation * (n - m) / 2`` per axis so output shape and alignment are unchanged;
    the window never shrinks past what the layer's padding allows.
    """
    if not 0.0 <= crop_tol < 1.0:
        raise ValueError(f'crop_tol must be in [0, 1), got {crop_tol}')
    grid = tuple(conv.kernel_size)
    if any(side % 2 == 0 for side in grid) or (isinstance(conv.padding, str) and conv.padding != 'same'):
        return conv
    if not per_axis and len(set(grid)) > 1:
        return conv
    padding = explicit_padding(conv)
    # each side can lose at most padding // dilation taps without moving the outputs
    min_sides = [side - 2 * (p // d) for side, p, d in zip(grid, padding, conv.dilation)]
    if not per_axis:
        min_sides = [max(min_sides)] * len(grid)
    energy = conv.weight.detach().square().sum((0, 1))
    sides = tuple(smallest_boxes(energy, len(grid), crop_tol, square=not per_axis, min_sides=min_sides).tolist())
    if sides == grid:
        return conv
    trims = [(side - kept) // 2 for side, kept in zip(grid, sides)]
    padding = tuple(p - d * trim for p, d, trim in zip(padding, conv.dilation, trims))
    window = tuple(slice(trim, trim + kept) for trim, kept in zip(trims, sides))
    with torch.no_grad():
        return plain_conv_like(conv, conv.weight[(slice(None), slice(None), *window)], padding)


def fuse_convs(model: nn.Module, crop_tol: Optional[float] = None, strict: bool = False) -> nn.Module:
    """Replace every adaptive layer in ``model`` by its plain torch convolution (``nn.Conv1d`` / ``nn.Conv2d`` /
    ``nn.Conv3d``), in place.

    Args:
        model: a model with adaptive layers (a bare adaptive layer is returned fused).
        crop_tol: None keeps the full grid (outputs equal up to float rounding); a value in [0, 1) crops each
            fused kernel as :func:`crop_conv` does: to a square (cubic) window for ``isotropic`` layers, per
            axis for the others.
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
            fused = module.fuse()
            replacements[module] = fused if crop_tol is None else crop_conv(fused, crop_tol, not module.isotropic)
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
