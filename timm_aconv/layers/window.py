"""Centred odd windows of a kernel: the energy share outside each, and a layer's convolution in one

A filter whose envelope (or product kernel) keeps all but ``crop_tol`` of its energy inside a
centred m×m window can convolve with that window alone. This module holds what every user of
that fact shares: the tolerance's check, :func:`energy_outside_windows` (the share outside every
window at once, from ring sums), :func:`smallest_windows` and :func:`window_conv2d`, the layer's
convolution with the centred crop of its kernel, with padding reduced (or the input trimmed) so
that the output is the one the full kernel zeroed outside the window gives, for every stride,
dilation, groups and padding mode.
"""

import functools
import itertools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .envelope import envelope_and_log_derivative

__all__ = [
    'DEFAULT_CROP_TOL',
    'check_crop_tol',
    'energy_outside_windows',
    'explicit_padding',
    'smallest_box',
    'smallest_windows',
    'training_windows',
    'window_conv2d',
]

# all but 0.1% of each filter's energy: ~3% relative output error per layer on uncorrelated inputs
DEFAULT_CROP_TOL = 1e-3


def check_crop_tol(crop_tol: float, name: str = 'crop_tol') -> float:
    """``crop_tol`` as a float in (0, 1) or a ValueError naming ``name``."""
    if isinstance(crop_tol, bool) or not isinstance(crop_tol, (int, float)) or not 0.0 < crop_tol < 1.0:
        raise ValueError(
            f"{name} must be a number in (0, 1) (the share of each filter's energy a crop may drop), got {crop_tol!r}"
        )
    return float(crop_tol)


def smallest_box(energy: torch.Tensor, crop_tol: float, min_sides: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The centred box of odd sides (one per axis) with the fewest taps that holds all but ``crop_tol`` of
    ``energy`` (non-negative, shape ``(n_0, n_1, ...)`` with odd sides), each side at least ``min_sides``;
    among boxes of one size the most even. What crops an elliptic or rectangular kernel per axis (a
    7×7 kernel whose energy lies along the rows may keep 7×3)."""
    grid = tuple(energy.shape)
    energy = energy.detach().double()
    total = float(energy.sum())
    minimum = [1] * len(grid) if min_sides is None else [max(1, int(side)) for side in min_sides]
    best: Optional[Tuple] = None
    for radii in itertools.product(*(range((low - 1) // 2, side // 2 + 1) for low, side in zip(minimum, grid))):
        sides = tuple(2 * radius + 1 for radius in radii)
        key = (math.prod(sides), max(sides), sides)
        if best is not None and key >= best:
            continue
        window = tuple(slice(side // 2 - radius, side // 2 + radius + 1) for side, radius in zip(grid, radii))
        if total == 0 or float(energy[window].sum()) / total >= 1.0 - crop_tol - 1e-12:
            best = key
    return best[2]


@functools.cache
def _chebyshev_rings(size: int, device: torch.device) -> torch.Tensor:
    """(n*n,) ring of each grid tap (its Chebyshev distance to the centre), row-major."""
    coords = (torch.arange(size, device=device) - size // 2).abs()
    return torch.maximum(coords[:, None], coords[None, :]).flatten()


def energy_outside_windows(energy: torch.Tensor) -> torch.Tensor:
    """Share of the energy outside each centred odd window, differentiably.

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


def smallest_windows(outside: torch.Tensor, crop_tol: float) -> torch.Tensor:
    """Side of the smallest centred odd window whose outside share is at most ``crop_tol``.

    Args:
        outside: (..., n//2 + 1) shares from :func:`energy_outside_windows` (non-increasing, last 0).
        crop_tol: the share a window may leave outside.

    Returns:
        (...,) odd window sides (long), on ``outside``'s device: no host synchronisation.
    """
    return 2 * (outside > crop_tol).sum(-1) + 1


def training_windows(sigma: torch.Tensor, sq_distance: torch.Tensor, crop_tol: float) -> torch.Tensor:
    """Per filter, the smallest centred odd window holding all but ``crop_tol`` of the energy of its
    envelope U and of U's derivative in sigma (without autograd, on sigma's device).

    The derivative's share outside a window is the larger one (``d log U / d sigma`` grows with the
    distance from the centre), and it is what a crop takes from dL/dsigma: holding both keeps the
    kernel and the gradient in sigma each within about ``sqrt(crop_tol)`` of the full grid's.

    Args:
        sigma: apertures, shape (filters,).
        sq_distance: the grid's squared distances, shape (n, n).
        crop_tol: the share of each energy a window may leave outside.

    Returns:
        (filters,) odd window sides (long).
    """
    envelope, log_derivative = envelope_and_log_derivative(sigma, sq_distance)
    energies = torch.stack([envelope.square(), (envelope * log_derivative).square()])
    return smallest_windows(energy_outside_windows(energies), crop_tol).amax(0)


def explicit_padding(conv: nn.Conv2d) -> Tuple[int, int]:
    """The symmetric per-side padding ``conv`` applies, with 'same'/'valid' made explicit."""
    if conv.padding == 'valid':
        return 0, 0
    if conv.padding == 'same':
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)


def window_conv2d(
    conv: nn.Conv2d, x: torch.Tensor, window_kernel: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``conv``'s convolution of ``x`` with ``window_kernel``, the centred m×m crop of its n×n kernel.

    Equal to ``conv._conv_forward(x, kernel_zeroed_outside_the_window, bias)``: same output shape and
    positions. Each side's padding shrinks by ``dilation * (n - m) / 2``; where that is more than
    the padding, the input's border is trimmed instead (the taps dropped would only have read it).
    Non-zero padding modes pad the remaining amount explicitly, which reads the same values (a
    reflection, replication or wrap of a smaller border is the inner part of the larger one's).
    """
    offset = (conv.kernel_size[0] - window_kernel.shape[-1]) // 2
    padding = [p - d * offset for p, d in zip(explicit_padding(conv), conv.dilation)]
    trim = [max(0, -p) for p in padding]
    if trim[0] or trim[1]:
        x = x[..., trim[0] : x.shape[-2] - trim[0], trim[1] : x.shape[-1] - trim[1]]
    pad_h, pad_w = (max(0, p) for p in padding)
    if conv.padding_mode != 'zeros':
        if pad_h or pad_w:
            x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=conv.padding_mode)
        pad_h = pad_w = 0
    return F.conv2d(x, window_kernel, bias, conv.stride, (pad_h, pad_w), conv.dilation, conv.groups)
