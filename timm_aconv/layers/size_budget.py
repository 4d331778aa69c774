"""A differentiable kernel-size budget on the apertures (sigma) of adaptive layers

A filter exported at its learned size (:func:`timm_aconv.export_learned_sizes`) keeps the
smallest centred window that holds all but ``crop_tol`` of its energy, so its cost per
output pixel is proportional to the window's taps. This module estimates that count from the
apertures alone, differentiably, so that training can be asked to stay within a compute budget:

- :func:`soft_kernel_size`: per filter, a smooth count of the windows that are too small,
  ``1 + 2 * sum_r sigmoid(log(outside_r / tol) / temperature)`` over radii ``r = 0 .. n//2 - 1``
  (as ``temperature -> 0`` it is the exported size of the envelope). For the paper's circular
  envelope on a square grid (``isotropic`` layers) the windows are squares (cubes) and ``tol`` is
  ``crop_tol``; for every other layer each axis gets its own side, from the share of the energy
  outside the slab ``|d_a| <= r`` with ``tol = crop_tol / ndim`` (so that the box of those sides
  leaves at most ``crop_tol`` outside). That count is flat for envelopes much wider than the grid's
  inner windows, so its gradient is taken from the width a Gaussian envelope would need on an
  unbounded grid, ``2 * c * s * (n - 1)`` with s the envelope's standard deviation along the axis
  (sigma; for a rotated envelope that of its projection) and ``c`` the half-width, in units of s,
  that holds all but ``tol`` (a straight-through estimate): every over-wide filter keeps being pushed
  towards smaller windows, in proportion to its size;
- :func:`estimated_kernel_flops`: the model's adaptive-layer multiply-adds at those soft sizes,
  relative to the full grids (1.0 = no saving);
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

from .adaptive_conv import AdaptiveConvNd
from .sigma import named_adaptive_layers
from .window import DEFAULT_CROP_TOL, check_crop_tol, energy_outside_boxes, energy_outside_windows

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
    layer: AdaptiveConvNd,
    crop_tol: float = DEFAULT_CROP_TOL,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """A differentiable estimate of each filter's exported window: its side, shape (out_channels,), for an
    ``isotropic`` layer (square or cubic windows), else its side per axis, shape (out_channels, ndim).

    Each side is between 1 and the grid's; as ``temperature -> 0`` it is the smallest odd window holding
    all but the tolerance of the filter's envelope energy. Its gradient with respect to ``layer.sigma`` (and
    ``theta``) is that of the unbounded Gaussian width (see the module docstring), never zero.
    """
    check_crop_tol(crop_tol)
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature!r}')
    ndim = len(layer.kernel_size)
    with torch.no_grad():  # the value only: the gradient comes from the Gaussian width below
        energy = layer.envelope().float().square()
        if layer.isotropic:
            if ndim == 2:
                outside = energy_outside_windows(energy)
            else:  # the boxes of equal sides
                boxes = energy_outside_boxes(energy, ndim)
                outside = torch.stack([boxes[(slice(None), *(radius,) * ndim)] for radius in range(boxes.shape[1])], 1)
            shares, tol = [outside], crop_tol
        else:  # per axis, the slab |d_a| <= r: the box whole along every other axis
            boxes = energy_outside_boxes(energy, ndim)
            shares = [
                boxes[(slice(None), *(slice(None) if a == axis else -1 for a in range(ndim)))] for axis in range(ndim)
            ]
            tol = crop_tol / ndim
        soft_count = torch.stack([_soft_count(share[:, :-1], tol, temperature) for share in shares], -1)
    if layer.isotropic:
        width = 2 * _half_width(tol, ndim) * (layer.grid_size - 1) * layer.sigma.float()
        return soft_count[:, 0].to(width) + width - width.detach()
    spread = _envelope_spread(layer)
    half_width = _half_width(tol, 1)
    width = torch.stack(
        [2 * half_width * (side - 1) * spread[:, axis] for axis, side in enumerate(layer.kernel_size)], -1
    )
    return soft_count.to(width) + width - width.detach()


def _soft_count(outside: torch.Tensor, tol: float, temperature: float) -> torch.Tensor:
    """``1 + 2 * sum_r sigmoid(log(outside_r / tol) / temperature)`` over the last axis."""
    log_ratio = outside.clamp_min(torch.finfo(outside.dtype).tiny).log() - math.log(tol)
    return 1 + 2 * torch.sigmoid(log_ratio / temperature).sum(-1)


def _envelope_spread(layer: AdaptiveConvNd) -> torch.Tensor:
    """The standard deviation (in sigma's units) of each filter's Gaussian along each grid axis, (out, ndim),
    differentiable in sigma and theta."""
    sigma = layer.sigma.float()
    if layer.theta is None:
        return sigma if sigma.dim() == 2 else sigma.unsqueeze(1).expand(-1, len(layer.kernel_size))
    cos, sin = layer.theta.float().cos().square(), layer.theta.float().sin().square()
    along, across = sigma[:, 0].square(), sigma[:, 1].square()
    return torch.stack([(along * cos + across * sin).sqrt(), (along * sin + across * cos).sqrt()], 1)


@functools.cache
def _half_width(tol: float, ndim: int) -> float:
    """c with erf(c)^ndim = 1 - tol: a centred cube of half-width c * s holds all but ``tol`` of the energy
    exp(-|x|² / s²) in ndim dimensions (a Gaussian envelope of aperture s, squared)."""
    return float(torch.erfinv(torch.tensor((1.0 - tol) ** (1.0 / ndim), dtype=torch.float64)))


def _layer_weights(model: nn.Module, output_pixels: Optional[Mapping]) -> Dict[str, tuple]:
    layers = dict(named_adaptive_layers(model))
    if not layers:
        raise ValueError(
            f'model has no adaptive layer ({type(model).__name__}): nothing to budget; '
            'build it adaptive (aconv_* models) or convert_convs it first'
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
    ``in_channels / groups * output pixels * taps``; ``output_pixels`` maps layers (modules or
    qualified names) to their output height × width, e.g. an :class:`OutputPixelTracker`; None
    counts per output pixel, which is exact when every adaptive layer runs at one resolution.
    """
    total = full = 0.0
    for layer, weight in _layer_weights(model, output_pixels).values():
        sides = soft_kernel_size(layer, crop_tol, temperature)
        taps = sides.pow(len(layer.kernel_size)) if layer.isotropic else sides.prod(-1)
        total = total + weight * taps.sum()
        full += weight * layer.out_channels * math.prod(layer.kernel_size)
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


class OutputPixelTracker(Dict[AdaptiveConvNd, int]):
    """Output pixels (height × width; in 1-D and 3-D the product of the output's axes) of every adaptive layer
    of ``model``, updated by forward hooks.

    A mapping from layer to pixel count for :func:`estimated_kernel_flops` / :func:`size_penalty`:
    the entries appear with the first forward pass. ``remove()`` detaches the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        layers = [layer for _, layer in named_adaptive_layers(model)]
        if not layers:
            raise ValueError(f'model has no adaptive layer ({type(model).__name__}) whose output to track')
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        self[layer] = math.prod(output.shape[2:])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
