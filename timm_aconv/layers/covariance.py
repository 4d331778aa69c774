"""The envelope's shape: ``covariance_type``, its apertures (``sigma``, ``theta``), their initialization and bounds

The paper's envelope is a Gaussian with a centre and a covariance (section 3.2); it uses a circle.
Adaptive layers name the covariance in scikit-learn's Gaussian-mixture vocabulary:

- ``'spherical'``: one aperture per filter, ``sigma`` of shape (out,) (the paper's layer);
- ``'diag'``: one aperture per filter and axis, ``sigma`` of shape (out, ndim) in the kernel's axis order;
- ``'full'`` (2-D): an ellipse rotated by a per-filter angle, ``sigma`` (out, 2) along its principal axes
  and ``theta`` (out,) in radians.

This module checks and resolves the layers' arguments for them (kernel sides, ``sigma_init``,
``sigma_bounds``) and keeps the registry through which a post-step hook finds a sigma's layer.
"""

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    'COVARIANCE_TYPES',
    'SIGMA_OWNERS',
    'SigmaInit',
    'check_bounds_pair',
    'check_covariance_type',
    'envelope_parameters',
    'resolve_axis_bounds',
    'resolve_kernel_size',
    'resolve_kernel_sizes',
    'resolve_sigma_init',
]

COVARIANCE_TYPES = ('spherical', 'diag', 'full')
SigmaInit = Union[float, Tuple[float, float]]
# each sigma parameter -> (a weak reference to) its layer: how a post-step hook that sees only an optimizer's
# parameters finds their bounds (timm_aconv.layers.sigma)
SIGMA_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def check_covariance_type(covariance_type: str, dims: int, owner: str) -> str:
    """``covariance_type`` if ``owner`` (a layer of ``dims`` dimensions) has it, else a ValueError naming the
    allowed values ('full' is 2-D only)."""
    allowed = COVARIANCE_TYPES if dims == 2 else tuple(kind for kind in COVARIANCE_TYPES if kind != 'full')
    if covariance_type not in allowed:
        raise ValueError(
            f'covariance_type must be one of {", ".join(map(repr, allowed))} for {owner}, got {covariance_type!r}'
            + (" ('full', a rotated ellipse, is 2-D only)" if covariance_type == 'full' else '')
        )
    return covariance_type


def resolve_kernel_sizes(
    kernel_size: Union[int, Sequence[int]], ndim: int, name: str = 'kernel_size'
) -> Tuple[int, ...]:
    """``kernel_size`` as ``ndim`` odd sides (an int for every axis), at least one of them >= 3."""
    if isinstance(kernel_size, numbers.Integral):
        sizes = (kernel_size,) * ndim
    else:
        sizes = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,)
    valid = len(sizes) == ndim and all(
        isinstance(size, numbers.Integral) and not isinstance(size, bool) and size >= 1 and size % 2 for size in sizes
    )
    if not valid or max(sizes) < 3:
        raise ValueError(
            f'{name} must be an odd int or {ndim} odd sides (e.g. {(7,) * ndim} or {(7,) + (3,) * (ndim - 1)}), '
            f'at least one >= 3, got {kernel_size!r}'
        )
    return tuple(int(size) for size in sizes)


def resolve_kernel_size(kernel_size: Union[int, Sequence[int]], name: str = 'kernel_size') -> int:
    """The side n of a square grid (an int or (n, n)); odd and >= 3 or a ValueError (what models and recipes
    that build square layers take)."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
            raise ValueError(f'{name} must be square (an int or (n, n)), got {tuple(kernel_size)}')
        kernel_size = kernel_size[0]
    if not isinstance(kernel_size, bool) and isinstance(kernel_size, numbers.Integral):
        size = int(kernel_size)
        if size >= 3 and size % 2 == 1:
            return size
    raise ValueError(f'{name} must be an odd integer >= 3 (3, 5, 7, 9, ...), got {kernel_size!r}')


def resolve_sigma_init(sigma_init: SigmaInit) -> Tuple[float, float]:
    """``sigma_init`` as a (low, high) range; a single value v becomes (v, v)."""
    if isinstance(sigma_init, (tuple, list)):
        if len(sigma_init) != 2:
            raise ValueError(f'sigma_init must be a positive number or a (low, high) pair, got {sigma_init!r}')
        low, high = float(sigma_init[0]), float(sigma_init[1])
    else:
        low = high = float(sigma_init)
    if not (low > 0 and high > 0):
        raise ValueError(f'sigma_init must be positive (sigma is an aperture), got {sigma_init!r}')
    if low > high:
        raise ValueError(f'sigma_init must be (low, high) with low <= high, got {sigma_init!r}')
    return low, high


def check_bounds_pair(pair, what: str, alternative: str = '') -> Tuple[float, float]:
    """``pair`` as (low, high) floats with 0 < low < high, or a ValueError naming ``what`` (and the
    ``alternative`` it may also be, e.g. ' or None for (1/n, n)')."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f'{what} must be a (low, high) pair{alternative}, got {pair!r}')
    low, high = float(pair[0]), float(pair[1])
    if not 0 < low < high:
        raise ValueError(f'{what} must satisfy 0 < low < high, got {pair!r}')
    return low, high


def resolve_axis_bounds(sigma_bounds, kernel_size: Tuple[int, ...], covariance_type: str):
    """``sigma_bounds`` as one (low, high) pair ('spherical', default ``(1/n, n)`` with n the largest side) or one
    pair per axis ('diag', 'full', default ``(1/n_a, n_a)``; for 'full' the axes are the ellipse's principal
    axes, whose bounds default to the grid's largest side's)."""
    largest = max(kernel_size)
    if covariance_type == 'spherical':
        if sigma_bounds is None:
            return 1.0 / largest, float(largest)
        return check_bounds_pair(sigma_bounds, 'sigma_bounds', ' or None for (1/n, n)')
    if sigma_bounds is None:
        if covariance_type == 'full':  # a rotated axis may lie along any side
            return ((1.0 / largest, float(largest)),) * len(kernel_size)
        return tuple((1.0 / size, float(size)) if size > 1 else (1.0 / largest, float(largest)) for size in kernel_size)
    if (
        isinstance(sigma_bounds, (tuple, list))
        and len(sigma_bounds) == 2
        and all(isinstance(value, numbers.Real) for value in sigma_bounds)
    ):
        return (check_bounds_pair(sigma_bounds, 'sigma_bounds'),) * len(kernel_size)
    if not isinstance(sigma_bounds, (tuple, list)) or len(sigma_bounds) != len(kernel_size):
        raise ValueError(
            f'sigma_bounds of a {covariance_type!r} layer must be a (low, high) pair for every axis or one pair '
            f'per axis ({len(kernel_size)}), got {sigma_bounds!r}'
        )
    return tuple(check_bounds_pair(pair, f'sigma_bounds[{axis}]') for axis, pair in enumerate(sigma_bounds))


def envelope_parameters(layer: nn.Module) -> Tuple[torch.Tensor, ...]:
    """The parameters ``layer``'s envelope depends on: ``sigma``, and ``theta`` for 'full'."""
    theta: Optional[torch.Tensor] = layer._parameters.get('theta')
    return (layer.sigma,) if theta is None else (layer.sigma, theta)
