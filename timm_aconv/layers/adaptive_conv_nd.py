"""1-D and 3-D adaptive convolutions: :class:`AdaptiveConv1d`, :class:`AdaptiveConv3d`

The paper's layer on a grid of one or three dimensions (signals; volumes and video): every output
filter owns a weight on an odd ``n_0 × n_1 × ...`` grid (sides may differ, e.g. ``(7, 3, 3)``) and
convolves with ``W ∘ U``, U a Gaussian envelope centred on the grid and normalized so that the sum
of its squares is the number of grid points (Theorem 3.1 holds for any envelope). Grid coordinates
are normalized per axis (``k / (n_a - 1)``, centre 0.5), as in 2-D. ``covariance_type``, in
scikit-learn's Gaussian-mixture vocabulary:

- ``'spherical'``: one aperture per filter, ``sigma`` of shape (out,), bounds one (low, high) pair
  (default ``(1/n, n)`` with n the largest side);
- ``'diag'``: one aperture per filter and axis, ``sigma`` of shape (out, ndim) in the kernel's axis
  order, bounds per axis (default ``(1/n_a, n_a)``).

Both are subclasses of the torch layer of their dimension (every option of it), with state-dict keys
``weight``, ``bias``, ``sigma``; :meth:`fuse` gives the plain layer. Training computes each layer's
product kernel with autograd on its own (the 2-D layer's kernel groups and training crop are 2-D only).
"""

import numbers
import weakref
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .adaptive_conv import SIGMA_OWNERS, SigmaInit, plain_conv_like, resolve_sigma_init
from .envelope import grid_axis_sq_distances, nd_envelope

__all__ = ['COVARIANCE_TYPES', 'AdaptiveConv1d', 'AdaptiveConv3d', 'AdaptiveConvNd', 'resolve_kernel_sizes']

COVARIANCE_TYPES = ('spherical', 'diag')


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


def _check_pair(pair, what: str) -> Tuple[float, float]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f'{what} must be a (low, high) pair, got {pair!r}')
    low, high = float(pair[0]), float(pair[1])
    if not 0 < low < high:
        raise ValueError(f'{what} must satisfy 0 < low < high, got {pair!r}')
    return low, high


def resolve_axis_bounds(sigma_bounds, kernel_size: Tuple[int, ...], covariance_type: str):
    """``sigma_bounds`` as one (low, high) pair ('spherical') or one pair per axis ('diag')."""
    if covariance_type == 'spherical':
        largest = max(kernel_size)
        return (1.0 / largest, float(largest)) if sigma_bounds is None else _check_pair(sigma_bounds, 'sigma_bounds')
    if sigma_bounds is None:
        largest = max(kernel_size)
        return tuple((1.0 / size, float(size)) if size > 1 else (1.0 / largest, float(largest)) for size in kernel_size)
    if (
        isinstance(sigma_bounds, (tuple, list))
        and len(sigma_bounds) == 2
        and all(isinstance(value, numbers.Real) for value in sigma_bounds)
    ):
        return (_check_pair(sigma_bounds, 'sigma_bounds'),) * len(kernel_size)
    if not isinstance(sigma_bounds, (tuple, list)) or len(sigma_bounds) != len(kernel_size):
        raise ValueError(
            f"sigma_bounds of a 'diag' layer must be a (low, high) pair for every axis or one pair per axis "
            f'({len(kernel_size)}), got {sigma_bounds!r}'
        )
    return tuple(_check_pair(pair, f'sigma_bounds[{axis}]') for axis, pair in enumerate(sigma_bounds))


class AdaptiveConvNd:
    """What :class:`AdaptiveConv1d` and :class:`AdaptiveConv3d` add to their torch layer (a mixin).

    ``sigma_bounds``: one (low, high) pair ('spherical') or one per axis ('diag').
    """

    __jit_ignored_attributes__ = ('sigma_bounds', 'sigma_init')
    dims: int  # the torch layer's dimensions (set by each subclass)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]],
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[str, int, Sequence[int]] = 0,
        dilation: Union[int, Sequence[int]] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = 'zeros',
        device=None,
        dtype=None,
        covariance_type: str = 'spherical',
        sigma_init: SigmaInit = (0.1, 0.5),
        sigma_bounds=None,
    ):
        super().__init__(  # the torch layer of the subclass (next in its MRO)
            in_channels,
            out_channels,
            resolve_kernel_sizes(kernel_size, self.dims),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._setup_adaptive(covariance_type, sigma_init, sigma_bounds, device, dtype)

    def _setup_adaptive(self, covariance_type: str, sigma_init: SigmaInit, sigma_bounds, device, dtype) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f'covariance_type must be one of {", ".join(map(repr, COVARIANCE_TYPES))} for '
                f'{type(self).__name__}, got {covariance_type!r}'
            )
        self.covariance_type = covariance_type
        self.sigma_init = resolve_sigma_init(sigma_init)
        self.sigma_bounds = resolve_axis_bounds(sigma_bounds, self.kernel_size, covariance_type)
        shape = (self.out_channels,) if covariance_type == 'spherical' else (self.out_channels, len(self.kernel_size))
        self.sigma = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.register_buffer(
            'sq_distances',
            torch.empty(len(self.kernel_size), *self.kernel_size, device=device, dtype=self.weight.dtype),
            persistent=False,
        )
        self.init_non_persistent_buffers()
        self.reset_sigma()

    def init_non_persistent_buffers(self) -> None:
        """Fill ``sq_distances`` (also after ``to_empty()``)."""
        with torch.no_grad():
            buffer = self.sq_distances
            buffer.copy_(grid_axis_sq_distances(self.kernel_size, buffer.device, buffer.dtype))

    def reset_sigma(self) -> None:
        """Spread sigma linearly over the filters across ``sigma_init`` (every axis alike for 'diag')."""
        low, high = self.sigma_init
        with torch.no_grad():
            values = torch.linspace(low, high, self.out_channels, dtype=self.sigma.dtype)
            self.sigma.copy_(values if self.sigma.ndim == 1 else values[:, None].expand_as(self.sigma))

    def clamp_sigma_(self):
        """Clip sigma in place into ``sigma_bounds`` (per axis for 'diag')."""
        with torch.no_grad():
            if self.covariance_type == 'spherical':
                self.sigma.clamp_(*self.sigma_bounds)
            else:
                bounds = torch.tensor(self.sigma_bounds, dtype=self.sigma.dtype, device=self.sigma.device)
                self.sigma.copy_(torch.maximum(torch.minimum(self.sigma, bounds[:, 1]), bounds[:, 0]))
        return self

    def envelope(self) -> torch.Tensor:
        """The normalized envelopes U, shape (out_channels, *kernel_size), differentiable in sigma."""
        return nd_envelope(self.sigma, self.sq_distances.to(self.sigma.dtype))

    def product_kernel(self) -> torch.Tensor:
        """The kernel ``W ∘ U`` the layer convolves with, shape of ``weight``, differentiable with autograd."""
        dtype = self.weight.dtype
        return self.weight * nd_envelope(self.sigma.to(dtype), self.sq_distances.to(dtype)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.product_kernel(), self.bias)

    def register_parameter(self, name: str, param: Optional[nn.Parameter]) -> None:
        super().register_parameter(name, param)
        if name == 'sigma' and param is not None:  # the clamp after any optimizer's step finds the layer
            SIGMA_OWNERS[param] = weakref.ref(self)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self.init_non_persistent_buffers()  # to_empty() leaves it uninitialized
        return module

    def __setstate__(self, state):
        super().__setstate__(state)
        if self._parameters.get('sigma') is not None:
            SIGMA_OWNERS[self._parameters['sigma']] = weakref.ref(self)

    def fuse(self) -> nn.Module:
        """The plain torch layer holding the product kernel (same outputs)."""
        with torch.no_grad():
            return plain_conv_like(self, self.product_kernel())

    def extra_repr(self) -> str:
        if self.covariance_type == 'spherical':
            bounds = f'({self.sigma_bounds[0]:.4g}, {self.sigma_bounds[1]:.4g})'
        else:
            bounds = '(' + ', '.join(f'({low:.4g}, {high:.4g})' for low, high in self.sigma_bounds) + ')'
        text = super().extra_repr() + f", covariance_type='{self.covariance_type}', sigma_bounds={bounds}"
        if not self.sigma.is_meta and self.sigma.numel():
            sigma = self.sigma.detach()
            text += f', sigma=[{float(sigma.min()):.3g}, {float(sigma.max()):.3g}]'
        return text


class AdaptiveConv1d(AdaptiveConvNd, nn.Conv1d):
    """1-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv1d`'s arguments,
    plus ``covariance_type`` (``'spherical'`` and ``'diag'`` coincide in 1-D but for ``sigma``'s shape),
    ``sigma_init`` and ``sigma_bounds`` (see the module docstring)."""

    dims = 1


class AdaptiveConv3d(AdaptiveConvNd, nn.Conv3d):
    """3-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv3d`'s arguments,
    plus ``covariance_type``, ``sigma_init`` and ``sigma_bounds`` (see the module docstring)."""

    dims = 3
