"""The envelope's shape: ``covariance_type``, its apertures (``sigma``, ``theta``) and their bounds

The paper's envelope is a Gaussian with a centre and a covariance (section 3.2); it uses a circle.
Adaptive layers name the covariance in scikit-learn's Gaussian-mixture vocabulary:

- ``'spherical'``: one aperture per filter, ``sigma`` of shape (out,) (the paper's layer);
- ``'diag'``: one aperture per filter and axis, ``sigma`` of shape (out, ndim) in the kernel's axis order;
- ``'full'`` (2-D): an ellipse rotated by a per-filter angle, ``sigma`` (out, 2) along its principal axes
  and ``theta`` (out,) in radians (:func:`~timm_aconv.layers.envelope.rotated_envelope`).

:class:`CovarianceEnvelope` is what the adaptive layers of every dimension share for that: their
parameters, initialization, the clamp of each axis's sigma into its bounds (theta is not clamped) and
the envelope by its formula (:func:`~timm_aconv.layers.envelope.covariance_envelope`). The layers are
:class:`~timm_aconv.layers.adaptive_conv_nd.AdaptiveConv1d` / ``AdaptiveConv3d`` and, for every grid
other than the paper's circle on a square, :class:`~timm_aconv.AdaptiveConv2d`.
"""

import math
import numbers
import weakref
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.weak import WeakIdKeyDictionary

from .envelope import covariance_envelope, grid_axis_coordinates

__all__ = [
    'COVARIANCE_TYPES',
    'SIGMA_OWNERS',
    'CovarianceEnvelope',
    'SigmaInit',
    'check_bounds_pair',
    'check_covariance_type',
    'envelope_parameters',
    'resolve_axis_bounds',
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
    sizes = (kernel_size,) * ndim if isinstance(kernel_size, numbers.Integral) else tuple(kernel_size)
    valid = len(sizes) == ndim and all(
        isinstance(size, numbers.Integral) and not isinstance(size, bool) and size >= 1 and size % 2 for size in sizes
    )
    if not valid or max(sizes) < 3:
        raise ValueError(
            f'{name} must be an odd int or {ndim} odd sides (e.g. {(7,) * ndim} or {(7,) + (3,) * (ndim - 1)}), '
            f'at least one >= 3, got {kernel_size!r}'
        )
    return tuple(int(size) for size in sizes)


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
    """``sigma_bounds`` as one (low, high) pair ('spherical') or one pair per axis ('diag', 'full'; for 'full'
    the axes are the ellipse's principal axes, whose bounds default to the grid's largest side's)."""
    largest = max(kernel_size)
    if covariance_type == 'spherical':
        return (
            (1.0 / largest, float(largest)) if sigma_bounds is None else check_bounds_pair(sigma_bounds, 'sigma_bounds')
        )
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
    theta = layer._parameters.get('theta')
    return (layer.sigma,) if theta is None else (layer.sigma, theta)


class CovarianceEnvelope:
    """What the adaptive layers of every dimension add to their torch layer for the envelope (a mixin):
    ``covariance_type``, ``sigma`` (and ``theta`` for 'full'), their initialization and clamp, and the
    non-persistent buffer ``grid_coordinates`` (:func:`~timm_aconv.layers.envelope.grid_axis_coordinates`)."""

    def _setup_covariance(
        self, covariance_type: str, sigma_init: SigmaInit, sigma_bounds, kernel_size: Tuple[int, ...], device, dtype
    ) -> None:
        """Create ``sigma`` / ``theta`` and ``grid_coordinates`` for a grid of ``kernel_size`` and initialize them."""
        self.covariance_type = covariance_type
        self.sigma_init = resolve_sigma_init(sigma_init)
        self.sigma_bounds = resolve_axis_bounds(sigma_bounds, kernel_size, covariance_type)
        shape = (self.out_channels,) if covariance_type == 'spherical' else (self.out_channels, len(kernel_size))
        self.sigma = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if covariance_type == 'full':
            self.theta = nn.Parameter(torch.empty(self.out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter('theta', None)
        self.register_buffer(
            'grid_coordinates',
            torch.empty(len(kernel_size), *kernel_size, device=device, dtype=self.weight.dtype),
            persistent=False,
        )
        self.init_non_persistent_buffers()
        self.reset_sigma()

    def init_non_persistent_buffers(self) -> None:
        """Fill ``grid_coordinates`` (also after ``to_empty()``)."""
        with torch.no_grad():
            buffer = self.grid_coordinates
            buffer.copy_(grid_axis_coordinates(tuple(buffer.shape[1:]), buffer.device, buffer.dtype))

    def reset_sigma(self) -> None:
        """Spread sigma linearly over the filters across ``sigma_init`` (every axis alike); theta 0 (a 'full'
        envelope starts as the 'diag' one; its angle moves once training makes its two apertures differ)."""
        low, high = self.sigma_init
        with torch.no_grad():
            values = torch.linspace(low, high, self.out_channels, dtype=self.sigma.dtype)
            self.sigma.copy_(values if self.sigma.ndim == 1 else values[:, None].expand_as(self.sigma))
            theta = self._parameters.get('theta')
            if theta is not None:
                theta.zero_()

    def clamp_sigma_(self):
        """Clip sigma in place into ``sigma_bounds`` (per axis for 'diag' and 'full'; theta is not clamped)."""
        with torch.no_grad():
            if self.covariance_type == 'spherical':
                self.sigma.clamp_(*self.sigma_bounds)
            else:
                bounds = torch.tensor(self.sigma_bounds, dtype=self.sigma.dtype, device=self.sigma.device)
                self.sigma.copy_(torch.maximum(torch.minimum(self.sigma, bounds[:, 1]), bounds[:, 0]))
        return self

    def envelope(self) -> torch.Tensor:
        """The normalized envelopes U, shape (out_channels, *kernel_size), differentiable in sigma (and theta)."""
        return covariance_envelope(self.sigma, self.theta, self.grid_coordinates.to(self.sigma.dtype))

    def product_kernel(self) -> torch.Tensor:
        """The kernel ``W ∘ U`` the layer convolves with, shape of ``weight``, differentiable with autograd."""
        dtype = self.weight.dtype
        theta = self.theta
        if theta is not None:
            theta = theta.to(dtype)
        envelope = covariance_envelope(self.sigma.to(dtype), theta, self.grid_coordinates.to(dtype))
        return self.weight * envelope.unsqueeze(1)

    def register_parameter(self, name: str, param: Optional[nn.Parameter]) -> None:
        super().register_parameter(name, param)
        if name == 'sigma' and param is not None:  # the clamp after any optimizer's step finds the layer
            SIGMA_OWNERS[param] = weakref.ref(self)

    def _covariance_repr(self) -> str:
        if self.covariance_type == 'spherical':
            bounds = f'({self.sigma_bounds[0]:.4g}, {self.sigma_bounds[1]:.4g})'
        else:
            bounds = '(' + ', '.join(f'({low:.4g}, {high:.4g})' for low, high in self.sigma_bounds) + ')'
        text = f", covariance_type='{self.covariance_type}', sigma_bounds={bounds}"
        if not self.sigma.is_meta and self.sigma.numel():
            sigma = self.sigma.detach()
            text += f', sigma=[{float(sigma.min()):.3g}, {float(sigma.max()):.3g}]'
            theta = self._parameters.get('theta')
            if theta is not None:
                degrees = theta.detach() * (180 / math.pi)
                text += f', theta=[{float(degrees.min()):.3g}°, {float(degrees.max()):.3g}°]'
        return text
