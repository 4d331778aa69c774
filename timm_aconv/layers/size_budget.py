"""A differentiable kernel-size budget on the apertures (sigma) of adaptive layers

A filter exported at its learned size (:func:`timm_aconv.export_learned_sizes`) keeps the
smallest centred odd window that holds all but ``crop_tol`` of its energy, so its cost per
output pixel is proportional to the window's area. This module estimates that area from sigma
alone, differentiably, so that training can be asked to stay within a compute budget:

- :func:`energy_outside_windows`: the share of a kernel's energy outside each centred window;
- :func:`soft_kernel_size`: per filter, a smooth count of the windows that are too small,
  ``1 + 2 * sum_r sigmoid(log(outside_r / crop_tol) / temperature)`` over radii
  ``r = 0 .. n//2 - 1`` (as ``temperature -> 0`` it is the exported size of the envelope).
  That count is flat for envelopes much wider than the grid's inner windows (they need the full
  grid whatever sigma does), so its gradient is taken from the width a Gaussian envelope would
  need on an unbounded grid, ``2 * c * sigma * (n - 1)`` with ``c = erfinv(sqrt(1 - crop_tol))``
  (a straight-through estimate): every over-wide filter keeps being pushed towards smaller
  windows, in proportion to its size;
- :func:`estimated_kernel_flops`: the model's adaptive-layer multiply-adds at those soft sizes,
  relative to the full n×n grids (1.0 = no saving);
- :func:`size_penalty`: ``relu(estimated_kernel_flops - target) / target``, a loss term that is
  zero within the budget.

The estimate uses the envelope's energy (the expected kernel energy when the weights' energy is
spread evenly over the grid, as at initialization); the export measures the product kernel's.

    >>> pixels = OutputPixelTracker(model)         # layers at different resolutions weigh their FLOPs
    >>> loss = criterion(model(x), y) + 0.1 * size_penalty(model, target=0.5, output_pixels=pixels)
"""

import functools
import math
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn

from .adaptive_conv import AdaptiveConv2d
from .sigma import named_adaptive_layers
from .window import DEFAULT_CROP_TOL, check_crop_tol, energy_outside_windows

__all__ = [
    'DEFAULT_CROP_TOL',
    'OutputPixelTracker',
    'check_crop_tol',
    'energy_outside_windows',
    'estimated_kernel_flops',
    'size_penalty',
    'soft_kernel_size',
]

# one unit = a factor e in the energy left outside a window
DEFAULT_TEMPERATURE = 1.0


def soft_kernel_size(
    layer: AdaptiveConv2d,
    crop_tol: float = DEFAULT_CROP_TOL,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """A differentiable estimate of each filter's exported kernel side, shape (out_channels,).

    Between 1 and n; as ``temperature -> 0`` it is the smallest odd window holding all but
    ``crop_tol`` of the filter's envelope energy. Its gradient with respect to ``layer.sigma`` is
    that of the unbounded Gaussian width (see the module docstring), never zero.
    """
    check_crop_tol(crop_tol)
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature!r}')
    with torch.no_grad():  # the value only: the gradient comes from the Gaussian width below
        outside = energy_outside_windows(layer.envelope().float().square())[:, :-1]  # the full grid always fits
        log_ratio = outside.clamp_min(torch.finfo(outside.dtype).tiny).log() - math.log(crop_tol)
        soft_count = 1 + 2 * torch.sigmoid(log_ratio / temperature).sum(-1)
    gaussian_width = 2 * _window_half_width(crop_tol) * (layer.grid_size - 1) * layer.sigma.float()
    return soft_count + gaussian_width - gaussian_width.detach()


@functools.cache
def _window_half_width(crop_tol: float) -> float:
    """c with erf(c)² = 1 - crop_tol: a centred square of half-width c * s holds all but ``crop_tol`` of
    the energy exp(-|x|² / s²) (a Gaussian envelope of aperture s, squared)."""
    return float(torch.erfinv(torch.tensor(math.sqrt(1.0 - crop_tol), dtype=torch.float64)))


def _layer_weights(model: nn.Module, output_pixels: Optional[Mapping]) -> Dict[str, tuple]:
    layers = dict(named_adaptive_layers(model))
    if not layers:
        raise ValueError(
            f'model has no AdaptiveConv2d layer ({type(model).__name__}): nothing to budget; '
            'build it adaptive (aconv_* models) or convert_convs it first'
        )
    others = [name or '(model)' for name, layer in layers.items() if not layer.is_circular]
    if others:
        raise ValueError(
            f'the size budget weighs square windows of spherical layers; {others} are elliptic or rectangular '
            "(covariance_type 'diag' / 'full' or a rectangular grid): budget a model of spherical layers"
        )
    weights = {}
    for name, layer in layers.items():
        pixels = 1 if output_pixels is None else output_pixels.get(layer, output_pixels.get(name))
        if pixels is None:
            raise ValueError(
                f'output_pixels has no entry for adaptive layer {name!r}: run a forward pass with the '
                'OutputPixelTracker attached, or pass output_pixels=None (per output pixel)'
            )
        weights[name] = (layer, float(pixels) * layer.in_channels // layer.groups)
    return weights


def estimated_kernel_flops(
    model: nn.Module,
    crop_tol: float = DEFAULT_CROP_TOL,
    temperature: float = DEFAULT_TEMPERATURE,
    output_pixels: Optional[Mapping] = None,
) -> torch.Tensor:
    """The adaptive layers' multiply-adds at their :func:`soft_kernel_size`, relative to full grids.

    A scalar tensor in (0, 1], differentiable in every sigma. Each filter weighs
    ``in_channels / groups * output pixels * size²``; ``output_pixels`` maps layers (modules or
    qualified names) to their output height × width, e.g. an :class:`OutputPixelTracker`; None
    counts per output pixel, which is exact when every adaptive layer runs at one resolution.
    """
    total = full = 0.0
    for layer, weight in _layer_weights(model, output_pixels).values():
        sizes = soft_kernel_size(layer, crop_tol, temperature)
        total = total + weight * sizes.square().sum()
        full += weight * layer.out_channels * layer.grid_size**2
    return total / full


def size_penalty(
    model: nn.Module,
    target: float = 0.5,
    crop_tol: float = DEFAULT_CROP_TOL,
    temperature: float = DEFAULT_TEMPERATURE,
    output_pixels: Optional[Mapping] = None,
) -> torch.Tensor:
    """``relu(estimated_kernel_flops - target) / target``: a loss term, zero within the budget.

    Args:
        model: a model with adaptive layers.
        target: the kernel-FLOPs budget relative to the full grids, in (0, 1].
        crop_tol, temperature, output_pixels: as :func:`estimated_kernel_flops`.

    Add it to the task loss with a weight (the engine's ``size_budget`` / ``size_budget_weight``);
    gradients reach sigma only, and only while the model is over budget.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise ValueError(f'target must be a kernel-FLOPs fraction in (0, 1], got {target!r}')
    flops = estimated_kernel_flops(model, crop_tol, temperature, output_pixels)
    return torch.relu(flops - target) / target


class OutputPixelTracker(Dict[AdaptiveConv2d, int]):
    """Output height × width of every adaptive layer of ``model``, updated by forward hooks.

    A mapping from layer to pixel count for :func:`estimated_kernel_flops` / :func:`size_penalty`:
    the entries appear with the first forward pass. ``remove()`` detaches the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        layers = [layer for _, layer in named_adaptive_layers(model)]
        if not layers:
            raise ValueError(f'model has no AdaptiveConv2d layer ({type(model).__name__}) whose output to track')
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        self[layer] = output.shape[-2] * output.shape[-1]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
