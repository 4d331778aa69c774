"""Centred odd windows of a kernel: the energy share outside each, and a layer's convolution in one

A filter whose envelope (or product kernel) keeps all but ``crop_tol`` of its energy inside a
centred window (a box of odd sides, one per axis) can convolve with that window alone. This module
holds what every user of that fact shares: the tolerance's check, the energy outside every centred box
at once (:func:`energy_outside_boxes`; :func:`energy_outside_windows` for square windows, which the size
budget differentiates), the smallest box that holds a tolerance (:func:`smallest_boxes`, per filter or
for a whole layer), the window a training crop needs (:func:`crop_window_for`) and :func:`window_conv`, a
layer's convolution with the centred crop of its kernel, padding reduced (or the input trimmed) so that
the output is the one the full kernel zeroed outside the window gives, for every stride, dilation,
groups and padding mode, in 1, 2 or 3 dimensions.
"""

import functools
import itertools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .envelope import envelope_derivatives

__all__ = [
    'DEFAULT_CROP_TOL',
    'check_crop_tol',
    'crop_window_for',
    'energy_outside_boxes',
    'energy_outside_windows',
    'explicit_padding',
    'smallest_boxes',
    'window_conv',
]

# all but 0.1% of each filter's energy: ~3% relative output error per layer on uncorrelated inputs
DEFAULT_CROP_TOL = 1e-3
_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def check_crop_tol(crop_tol: float, name: str = 'crop_tol') -> float:
    """``crop_tol`` as a float in (0, 1) or a ValueError naming ``name``."""
    if isinstance(crop_tol, bool) or not isinstance(crop_tol, (int, float)) or not 0.0 < crop_tol < 1.0:
        raise ValueError(
            f"{name} must be a number in (0, 1) (the share of each filter's energy a crop may drop), got {crop_tol!r}"
        )
    return float(crop_tol)


@functools.cache
def _chebyshev_rings(size: int, device: torch.device) -> torch.Tensor:
    """(n*n,) ring of each grid tap (its Chebyshev distance to the centre), row-major."""
    coords = (torch.arange(size, device=device) - size // 2).abs()
    return torch.maximum(coords[:, None], coords[None, :]).flatten()


def energy_outside_windows(energy: torch.Tensor) -> torch.Tensor:
    """Share of the energy outside each centred odd square window, differentiably.

    Args:
        energy: non-negative per-tap energies of shape (..., n, n), n odd (e.g. ``envelope ** 2`` or
            a kernel's squares summed over its input channels).

    Returns:
        (..., n//2 + 1): entry r is the share outside the centred (2r+1)×(2r+1) window (the last is 0);
        computed from ring sums, so small shares carry no cancellation error. An all-zero energy gives 0.
    """
    size = energy.shape[-1]
    if energy.shape[-2] != size or size % 2 == 0:
        raise ValueError(f'energy must be (..., n, n) with odd n, got shape {tuple(energy.shape)}')
    flat = energy.flatten(-2)
    # index_add, not a matmul with a one-hot map: tiny BLAS calls stall on a busy multi-threaded CPU
    rings = flat.new_zeros(*flat.shape[:-1], size // 2 + 1).index_add(-1, _chebyshev_rings(size, energy.device), flat)
    outside = rings.flip(-1).cumsum(-1).flip(-1) - rings  # sum over rings k > r
    total = rings.sum(-1, keepdim=True)
    return outside / total.clamp_min(torch.finfo(energy.dtype).tiny)


def energy_outside_boxes(energy: torch.Tensor, ndim: int) -> torch.Tensor:
    """Share of the energy outside every centred box of odd sides, in float64.

    Args:
        energy: non-negative per-tap energies of shape (..., n_0, ..., n_{ndim-1}), odd sides.
        ndim: the number of grid axes (the trailing dimensions of ``energy``).

    Returns:
        (..., n_0//2 + 1, ..., n_{ndim-1}//2 + 1): entry (r_0, r_1, ...) is the share outside the centred box
        of sides (2r_0+1, 2r_1+1, ...) (the last is 0; an all-zero energy gives 0).
    """
    sides = energy.shape[energy.dim() - ndim :]
    if any(side % 2 == 0 for side in sides):
        raise ValueError(f'energy must have odd sides on its last {ndim} axes, got shape {tuple(energy.shape)}')
    inside = energy.detach().double()
    for axis, side in zip(range(energy.dim() - ndim, energy.dim()), sides):
        # fold each axis onto its distance from the centre, then the box of radius r sums distances <= r
        distance = (torch.arange(side, device=energy.device) - side // 2).abs()
        folded_shape = list(inside.shape)
        folded_shape[axis] = side // 2 + 1
        inside = inside.new_zeros(folded_shape).index_add(axis, distance, inside).cumsum(axis)
    total = inside[(..., *([-1] * ndim))].reshape(*inside.shape[: inside.dim() - ndim], *([1] * ndim))
    return ((total - inside) / total.clamp_min(torch.finfo(torch.float64).tiny)).clamp_min(0)


@functools.cache
def _box_order(sides: Tuple[int, ...], square: bool, min_sides: Tuple[int, ...]) -> Tuple[List[int], torch.Tensor]:
    """The candidate boxes of a grid, fewest taps first (then the most even, then by sides): their flat indices
    into :func:`energy_outside_boxes`' radius axes, and their sides (boxes, ndim)."""
    radii = [range((low - 1) // 2, side // 2 + 1) for low, side in zip(min_sides, sides)]
    boxes = [box for box in itertools.product(*radii) if not square or len(set(box)) == 1]
    if not boxes:  # a square box on a rectangular grid: the full grid
        boxes = [tuple(side // 2 for side in sides)]
    boxes.sort(key=lambda box: (math.prod(2 * r + 1 for r in box), max(box), box))
    strides = [math.prod(side // 2 + 1 for side in sides[axis + 1 :]) for axis in range(len(sides))]
    flat = [sum(r * stride for r, stride in zip(box, strides)) for box in boxes]
    return flat, torch.tensor([[2 * r + 1 for r in box] for box in boxes])


def _smallest_holding(
    outside: torch.Tensor, sides: Tuple[int, ...], crop_tol: float, square: bool, min_sides: Tuple[int, ...]
) -> torch.Tensor:
    """Per leading index of ``outside`` (..., *radius axes, as :func:`energy_outside_boxes` gives), the sides of
    the first candidate box (:func:`_box_order`) whose outside share is at most ``crop_tol``."""
    flat, box_sides = _box_order(sides, square, min_sides)
    holds = outside.flatten(outside.dim() - len(sides)).cpu()[..., flat] <= crop_tol
    holds[..., -1] = True  # the largest candidate holds whatever a rounding error says
    return box_sides[holds.to(torch.uint8).argmax(-1)]


def smallest_boxes(
    energy: torch.Tensor,
    ndim: int,
    crop_tol: float,
    square: bool = False,
    min_sides: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Per leading index of ``energy`` (..., *sides), the centred box of odd sides with the fewest taps that holds
    all but ``crop_tol`` of its energy (among boxes of one size the most even), each side at least ``min_sides``;
    ``square``: square boxes only (a circular envelope's windows). Returns (..., ndim) sides (long, on the CPU)."""
    sides = tuple(energy.shape[energy.dim() - ndim :])
    minimum = tuple(1 for _ in sides) if min_sides is None else tuple(max(1, int(side)) for side in min_sides)
    return _smallest_holding(energy_outside_boxes(energy, ndim), sides, crop_tol, square, minimum)


def crop_window_for(
    sigma: torch.Tensor, theta: Optional[torch.Tensor], coordinates: torch.Tensor, crop_tol: float, square: bool
) -> Tuple[int, ...]:
    """The smallest centred box that holds all but ``crop_tol`` of the energy of every filter's envelope U and of
    U's derivative in each of its apertures (one read of sigma to the host).

    The derivative's share outside a box is the larger one (``d log U / d sigma`` grows with the distance from the
    centre), and it is what a crop takes from dL/dsigma: holding both keeps the kernel and the gradients in the
    apertures each within about ``sqrt(crop_tol)`` of the full grid's.

    Args:
        sigma, theta: apertures as :func:`~timm_aconv.layers.envelope.normalized_envelope` takes them (any number
            of filters: the box holds them all).
        coordinates: the grid's (ndim, *sides) offsets.
        crop_tol: the share of each energy the box may leave outside.
        square: square boxes only (a circular envelope on a square grid).
    """
    envelope, derivatives = envelope_derivatives(sigma, theta, coordinates)
    energies = torch.cat([envelope.unsqueeze(0), derivatives]).double().square()
    sides = tuple(coordinates.shape[1:])
    outside = energy_outside_boxes(energies, len(sides)).flatten(0, 1).amax(0)  # the worst filter and energy
    return tuple(_smallest_holding(outside, sides, crop_tol, square, tuple(1 for _ in sides)).tolist())


def explicit_padding(conv: nn.Module) -> Tuple[int, ...]:
    """The symmetric per-side padding ``conv`` applies on each axis, with 'same'/'valid' made explicit."""
    if conv.padding == 'valid':
        return (0,) * len(conv.kernel_size)
    if conv.padding == 'same':
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)


def window_conv(conv: nn.Module, x: torch.Tensor, window_kernel: torch.Tensor, bias: Optional[torch.Tensor]):
    """``conv``'s convolution of ``x`` with ``window_kernel``, the centred crop of its kernel (any sides, any of
    1-3 dimensions).

    Equal to ``conv._conv_forward(x, kernel_zeroed_outside_the_window, bias)``: same output shape and
    positions. Each side's padding shrinks by ``dilation * (n - m) / 2``; where that is more than
    the padding, the input's border is trimmed instead (the taps dropped would only have read it).
    Non-zero padding modes pad the remaining amount explicitly, which reads the same values (a
    reflection, replication or wrap of a smaller border is the inner part of the larger one's).
    """
    ndim = window_kernel.dim() - 2
    offsets = [(full - kept) // 2 for full, kept in zip(conv.kernel_size, window_kernel.shape[2:])]
    padding = [p - d * offset for p, d, offset in zip(explicit_padding(conv), conv.dilation, offsets)]
    if any(p < 0 for p in padding):
        x = x[
            (..., *(slice(max(0, -p), x.shape[x.dim() - ndim + axis] - max(0, -p)) for axis, p in enumerate(padding)))
        ]
    padding = [max(0, p) for p in padding]
    if conv.padding_mode != 'zeros':
        if any(padding):
            x = F.pad(x, [side for p in reversed(padding) for side in (p, p)], mode=conv.padding_mode)
        padding = [0] * ndim
    return _CONVS[ndim](x, window_kernel, bias, conv.stride, tuple(padding), conv.dilation, conv.groups)
