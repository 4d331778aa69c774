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

import weakref
from typing import Sequence, Union

import torch
import torch.nn as nn

from .adaptive_conv import plain_conv_like
from .covariance import (
    COVARIANCE_TYPES,
    SIGMA_OWNERS,
    CovarianceEnvelope,
    SigmaInit,
    check_covariance_type,
    resolve_axis_bounds,
    resolve_kernel_sizes,
)

__all__ = [
    'COVARIANCE_TYPES',
    'AdaptiveConv1d',
    'AdaptiveConv3d',
    'AdaptiveConvNd',
    'resolve_axis_bounds',
    'resolve_kernel_sizes',
]


class AdaptiveConvNd(CovarianceEnvelope):
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
        check_covariance_type(covariance_type, self.dims, type(self).__name__)
        self._setup_covariance(covariance_type, sigma_init, sigma_bounds, self.kernel_size, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.product_kernel(), self.bias)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self.init_non_persistent_buffers()  # to_empty() leaves it uninitialized
        return module

    def __setstate__(self, state):
        super().__setstate__(state)
        self._parameters.setdefault('theta', None)
        if 'grid_coordinates' not in self._buffers:  # pickled when the buffer held squared distances
            self._buffers.pop('sq_distances', None)
            shape = (len(self.kernel_size), *self.kernel_size)
            self.register_buffer('grid_coordinates', self.weight.new_empty(shape), persistent=False)
            self.init_non_persistent_buffers()
        if self._parameters.get('sigma') is not None:
            SIGMA_OWNERS[self._parameters['sigma']] = weakref.ref(self)

    def fuse(self) -> nn.Module:
        """The plain torch layer holding the product kernel (same outputs)."""
        with torch.no_grad():
            return plain_conv_like(self, self.product_kernel())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._covariance_repr()


class AdaptiveConv1d(AdaptiveConvNd, nn.Conv1d):
    """1-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv1d`'s arguments,
    plus ``covariance_type`` (``'spherical'`` and ``'diag'`` coincide in 1-D but for ``sigma``'s shape),
    ``sigma_init`` and ``sigma_bounds`` (see the module docstring)."""

    dims = 1


class AdaptiveConv3d(AdaptiveConvNd, nn.Conv3d):
    """3-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv3d`'s arguments,
    plus ``covariance_type``, ``sigma_init`` and ``sigma_bounds`` (see the module docstring)."""

    dims = 3
