"""Adaptive-size convolution (ACONV) in 1, 2 and 3 dimensions

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.)

Every output filter owns a weight ``W_q`` on an odd grid and trainable apertures ``sigma_q``. A
normalized Gaussian envelope ``U(sigma_q)`` centred on the grid masks the weights before the
convolution, ``conv(x, W ∘ U)``, so each filter learns its own kernel size (the envelope's formula:
:mod:`timm_aconv.layers.envelope`; its shapes: :mod:`timm_aconv.layers.covariance`).

:class:`AdaptiveConv2d` is an :class:`torch.nn.Conv2d` subclass (state-dict keys ``weight``, ``bias``,
``sigma``, and ``theta`` for a rotated envelope), :class:`AdaptiveConv1d` and :class:`AdaptiveConv3d` the
same for ``nn.Conv1d`` / ``nn.Conv3d``: code that inspects convolutions keeps working, and every option of
the torch layer (stride, dilation, groups, string padding, padding modes, bias, device/dtype) is supported.

Example::

    >>> conv = AdaptiveConv2d(3, 16, kernel_size=7, padding='same', sigma_init=(0.1, 0.5))
    >>> conv(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 16, 32, 32])
    >>> conv.envelope().shape, conv.product_kernel().shape
    (torch.Size([16, 7, 7]), torch.Size([16, 3, 7, 7]))
"""

import math
import numbers
import weakref
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .covariance import (
    SIGMA_OWNERS,
    SigmaInit,
    check_covariance_type,
    resolve_axis_bounds,
    resolve_kernel_sizes,
    resolve_sigma_init,
)
from .envelope import grid_coordinates, normalized_envelope
from .kernel_group import KernelGroup, OptimizerSteps
from .window import check_crop_tol, crop_window_for, window_conv

__all__ = [
    'CROPPING_LAYERS',
    'TRAIN_CROP_INTERVAL',
    'TRAIN_CROP_MARGIN',
    'AdaptiveConv1d',
    'AdaptiveConv2d',
    'AdaptiveConv3d',
    'AdaptiveConvNd',
    'check_crop_interval',
    'plain_conv_like',
]

_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)  # torch >= 2.4
# layers with a train_crop_tol: the optimizer post-step hook of timm_aconv.layers.train_crop refreshes their windows
CROPPING_LAYERS: 'weakref.WeakSet[AdaptiveConvNd]' = weakref.WeakSet()
# train_crop_*: sigma is read every 10 optimizer steps, and each window planned for apertures 10% wider than
# the read ones plus their growth since the previous read, extrapolated to the next read
TRAIN_CROP_INTERVAL = 10
TRAIN_CROP_MARGIN = 0.1
_PLAIN_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def plain_conv_like(conv: nn.Module, weight: torch.Tensor, padding=None) -> nn.Module:
    """A plain ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` (by ``weight``'s dimensions) holding ``weight``
    and ``conv``'s bias, with ``conv``'s options (``padding`` overrides its padding), ``requires_grad``
    flags and train/eval mode: what fusing or cropping an (adaptive) convolution gives."""
    plain = _PLAIN_CONVS[weight.ndim - 2](
        conv.in_channels,
        conv.out_channels,
        tuple(weight.shape[2:]),
        stride=conv.stride,
        padding=conv.padding if padding is None else padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    plain.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        plain.bias.requires_grad_(conv.bias.requires_grad)
    return plain.train(conv.training)


def check_crop_interval(interval: int) -> int:
    """``train_crop_interval`` as a positive int, or a ValueError naming it."""
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or interval < 1:
        raise ValueError(f'train_crop_interval must be an integer >= 1 (optimizer steps), got {interval!r}')
    return int(interval)


class AdaptiveConvNd:
    """What an adaptive convolution adds to the torch layer of its dimension (a mixin; the layers are
    :class:`AdaptiveConv1d`, :class:`AdaptiveConv2d` and :class:`AdaptiveConv3d`).

    Takes every argument of the torch layer, plus:

    Args:
        sigma_init: initial apertures in normalized grid units (sigma = 1/n is about one tap): a (low, high)
            pair spaced linearly over the output filters (every axis alike), or one value for all. Default
            (0.1, 0.5), the paper's setting for its networks.
        sigma_bounds: the range :meth:`clamp_sigma_` keeps sigma in: one (low, high) pair, or for 'diag' and
            'full' one pair per axis; None (default) is the paper's (1/n, n) (per axis ``(1/n_a, n_a)`` for
            'diag').
        train_crop_tol: None (default: off) or a share in (0, 1): in training the layer convolves with the
            centred crop of its product kernel to the smallest box of odd sides (``crop_window``) that holds all
            but this share of the energy of every filter's envelope and of its derivatives in its apertures,
            output unchanged in shape; evaluation, :meth:`fuse` and exports are unaffected.
        train_crop_interval: optimizer steps between two reads of sigma that choose the window
            (:mod:`timm_aconv.layers.train_crop`; the forward itself never reads sigma's values).
        covariance_type: the envelope's shape (:mod:`timm_aconv.layers.covariance`): 'spherical' (default, the
            paper's circle, ``sigma`` (out,)), 'diag' (axis-aligned, ``sigma`` (out, ndim) in the kernel's axis
            order) or, in 2-D, 'full' (an ellipse rotated by ``theta`` (out,), radians).

    ``kernel_size`` may have different odd sides (e.g. ``(7, 3)``); grid coordinates are normalized per axis,
    so one sigma spans the same share of each side.

    The forward convolves with :meth:`product_kernel` (``weight * envelope``), which the layer takes from its
    :class:`~timm_aconv.layers.kernel_group.KernelGroup`: the product kernels of all adaptive layers of a
    model are computed together, with or without gradients. The grid's offsets are the non-persistent buffer
    ``grid_coordinates``.
    """

    __jit_ignored_attributes__ = (
        'sigma_init',
        'sigma_bounds',
        'covariance_type',
        '_kernel_group',
        '_group_index',
        'crop_window',
        'train_crop_interval',
        'train_crop_margin',
        'train_crop_overruns',
        '_crop_read_step',
        '_crop_read_sigma',
        '_train_crop_tol',
        '_crop_margin_scale',
    )
    __jit_unused_properties__ = ('train_crop_tol', 'grid_size', 'isotropic')
    dims: int  # the torch layer's dimensions (set by each subclass)
    _kernel_group: Optional[KernelGroup] = None  # set by KernelGroup.attach
    _group_index: int = 0
    _train_crop_tol: Optional[float] = None
    crop_window: Optional[Tuple[int, ...]] = None  # the box the training forward convolves with (None: the grid)

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
        sigma_init: SigmaInit = (0.1, 0.5),
        sigma_bounds=None,
        train_crop_tol: Optional[float] = None,
        train_crop_interval: int = TRAIN_CROP_INTERVAL,
        covariance_type: str = 'spherical',
    ):
        check_covariance_type(covariance_type, self.dims, type(self).__name__)
        sides = resolve_kernel_sizes(kernel_size, self.dims)
        super().__init__(  # the torch layer of the subclass (next in its MRO)
            in_channels,
            out_channels,
            sides,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.covariance_type = covariance_type
        self.sigma_init = resolve_sigma_init(sigma_init)
        self.sigma_bounds = resolve_axis_bounds(sigma_bounds, sides, covariance_type)
        shape = (out_channels,) if covariance_type == 'spherical' else (out_channels, len(sides))
        self.sigma = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if covariance_type == 'full':
            self.theta = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter('theta', None)
        coordinates = torch.empty(len(sides), *sides, device=device, dtype=self.weight.dtype)
        self.register_buffer('grid_coordinates', coordinates, persistent=False)
        self.init_non_persistent_buffers()
        self.reset_sigma()
        self.train_crop_interval = check_crop_interval(train_crop_interval)
        self.train_crop_margin = TRAIN_CROP_MARGIN
        self.train_crop_overruns = 0  # reads that found the window in use too small for the tolerance
        self._crop_read_step, self._crop_read_sigma, self._crop_margin_scale = 0, None, 1.0
        self.train_crop_tol = train_crop_tol

    # ------------------------------------------------------------------------ the kernel and the forward
    def envelope(self) -> torch.Tensor:
        """The normalized envelopes U, shape (out_channels, *kernel_size), differentiable in sigma (and theta)."""
        return normalized_envelope(self.sigma, self.theta, self.grid_coordinates.to(self.sigma.dtype))

    def product_kernel(self) -> torch.Tensor:
        """The kernel ``W ∘ U`` the layer convolves with, shape of ``weight``, differentiable with autograd (this
        layer alone; the forward takes the kernels its group computed for all its members, with the same bits)."""
        dtype = self.weight.dtype
        theta = self.theta
        if theta is not None:
            theta = theta.to(dtype)
        envelope = normalized_envelope(self.sigma.to(dtype), theta, self.grid_coordinates.to(dtype))
        return self.weight * envelope.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.product_kernel(), self.bias)
        kernel = self._forward_kernel()
        if kernel.shape != self.weight.shape:  # a training crop
            return window_conv(self, x, kernel, self.bias)
        return self._conv_forward(x, kernel, self.bias)

    @torch.jit.unused
    def _forward_kernel(self) -> torch.Tensor:
        """The kernel of this forward: the one the layer's group computed (or traced, under ``torch.compile``),
        or this layer's own under ``torch.export`` and ``torch.func`` transforms (batched or wrapped
        parameters)."""
        if torch.compiler.is_compiling():
            if _is_exporting():
                return self.product_kernel()
            return self._group().traced_kernel(self._group_index)
        if torch._C._are_functorch_transforms_active():
            return self.product_kernel()
        return self._group().kernel(self, self._group_index)

    @torch.jit.unused
    def _group(self) -> KernelGroup:
        group = self._kernel_group
        return KernelGroup([self]) if group is None else group  # a layer in no group forms its own

    def fuse(self) -> nn.Module:
        """The plain torch layer holding the product kernel (same outputs).

        Named ``fuse`` so that ``timm.utils.reparameterize_model`` fuses adaptive layers.
        """
        with torch.no_grad():
            return plain_conv_like(self, self.product_kernel())

    # ------------------------------------------------------------------------ apertures
    @property
    def grid_size(self) -> int:
        """The base-grid size n: the side of a square grid, the largest side of any other."""
        return max(self.kernel_size)

    @property
    def isotropic(self) -> bool:
        """Whether the envelope is the same along every axis ('spherical' on a grid of equal sides, the paper's
        circle): its windows are squares (cubes), else boxes with a side per axis."""
        return self.covariance_type == 'spherical' and len(set(self.kernel_size)) == 1

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, 'sigma', None) is not None:
            self.reset_sigma()

    def reset_sigma(self) -> None:
        """Spread sigma linearly over the filters across ``sigma_init`` (every axis alike); theta 0 (a 'full'
        envelope starts as the 'diag' one; its angle moves once training makes its two apertures differ)."""
        low, high = self.sigma_init
        with torch.no_grad():
            values = torch.linspace(low, high, self.out_channels, dtype=self.sigma.dtype)
            self.sigma.copy_(values if self.sigma.dim() == 1 else values[:, None].expand_as(self.sigma))
            if self.theta is not None:
                self.theta.zero_()

    def clamp_sigma_(self):
        """Clip sigma in place into ``sigma_bounds`` (per axis for 'diag' and 'full'; theta is not clamped)."""
        with torch.no_grad():
            if self.covariance_type == 'spherical':
                self.sigma.clamp_(*self.sigma_bounds)
            else:
                low, high = torch.tensor(self.sigma_bounds, dtype=self.sigma.dtype, device=self.sigma.device).unbind(1)
                self.sigma.copy_(torch.maximum(torch.minimum(self.sigma, high), low))
        return self

    def init_non_persistent_buffers(self) -> None:
        """Fill ``grid_coordinates`` (also after ``to_empty()``; timm's ``reinit_non_persistent_buffers``)."""
        with torch.no_grad():
            buffer = self.grid_coordinates
            buffer.copy_(grid_coordinates(tuple(buffer.shape[1:]), buffer.device, buffer.dtype))

    def register_parameter(self, name: str, param: Optional[nn.Parameter]) -> None:
        super().register_parameter(name, param)
        if name == 'sigma' and param is not None:  # the clamp after any optimizer's step finds the layer
            SIGMA_OWNERS[param] = weakref.ref(self)

    # ------------------------------------------------------------------------ training at the learned size
    @property
    def train_crop_tol(self) -> Optional[float]:
        """The energy share the training forward's crop may drop (None: no crop, the paper's layer)."""
        return self._train_crop_tol

    @train_crop_tol.setter
    def train_crop_tol(self, value: Optional[float]) -> None:
        self._train_crop_tol = None if value is None else check_crop_tol(value, 'train_crop_tol')
        self.crop_window, self._crop_read_sigma, self._crop_margin_scale = None, None, 1.0
        if self._kernel_group is not None:
            self._kernel_group.reset()
        if value is None:
            CROPPING_LAYERS.discard(self)
        else:
            CROPPING_LAYERS.add(self)
            self.refresh_crop_window()

    def kernel_window(self) -> Tuple[int, ...]:
        """The sides of the kernel the next forward convolves with: ``crop_window`` in training mode with
        ``train_crop_tol`` set (once chosen), else the whole grid."""
        window = self.crop_window
        if window is None or not self.training or self._train_crop_tol is None:
            return tuple(self.kernel_size)
        return window

    @torch.jit.unused
    def refresh_crop_window(self) -> Optional[Tuple[int, ...]]:
        """Reads the apertures (one host synchronisation) and sets ``crop_window``, the box of the training forward
        until the next read: the smallest centred box holding all but ``train_crop_tol`` of the energy of every
        filter's envelope U and of its derivatives in its apertures (so that the kernel and dL/dsigma each change by
        about sqrt(tol) at most), planned for apertures that have grown on: the current ones plus twice their
        growth per step since the previous read over the next ``train_crop_interval`` steps, widened by
        ``train_crop_margin``. A read that finds the window in use too small for the current apertures counts in
        ``train_crop_overruns`` and doubles the layer's margin from then on. Called every ``train_crop_interval``
        optimizer steps (:mod:`timm_aconv.layers.train_crop`), when the tolerance is set and after
        ``load_state_dict``; returns the window (None: no crop set, or sigma on the meta device)."""
        if self._train_crop_tol is None or self.sigma.is_meta:
            return None
        with torch.no_grad():
            sigma = self.sigma.detach().float().clone()  # kept: the parameter changes in place
            theta = None if self.theta is None else self.theta.detach().float()
            steps = OptimizerSteps.count
            planned = sigma
            previous = self._crop_read_sigma
            if previous is not None and previous.shape == sigma.shape and steps > self._crop_read_step:
                # twice the growth per step seen since the previous read, over the next interval
                growth = (sigma - previous.to(sigma.device)).clamp_min(0)
                planned = sigma + growth * (2 * self.train_crop_interval / (steps - self._crop_read_step))
            planned = planned * (1 + self.train_crop_margin * self._crop_margin_scale)
            coordinates = self.grid_coordinates.float()
            tol, square = self._train_crop_tol, self.isotropic
            current = crop_window_for(sigma, theta, coordinates, tol, square)
            window = crop_window_for(planned, theta, coordinates, tol, square)
            window = tuple(max(now, later) for now, later in zip(current, window))
        if self.crop_window is not None and any(now > used for now, used in zip(current, self.crop_window)):
            self.train_crop_overruns += 1
            self._crop_margin_scale *= 2  # the apertures moved faster than planned: plan wider from now on
        changed = window != self.crop_window
        self.crop_window = window
        if changed and self._kernel_group is not None:
            self._kernel_group.reset()  # plan the group's families for the new window (outside any compiled code)
        self._crop_read_step, self._crop_read_sigma = steps, sigma
        return window

    # ------------------------------------------------------------------------ module plumbing
    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self.init_non_persistent_buffers()  # to_empty() leaves it uninitialized
        if self._kernel_group is not None:
            self._kernel_group.reset()  # devices or dtypes may have changed
        return module

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if self._train_crop_tol is not None:  # a resume: the window of the loaded apertures
            self._crop_read_sigma = None
            self.refresh_crop_window()

    def __getstate__(self):
        # the group travels as an empty group that the copied members of the same group join (a layer copied
        # alone is alone in its copy of the group)
        state = self.__dict__.copy()
        state.pop('_group_index', None)
        return state

    def __setstate__(self, state):
        group = state.pop('_kernel_group', None)
        super().__setstate__(state)
        if group is not None:
            group.add([self])
        if self._train_crop_tol is not None:
            CROPPING_LAYERS.add(self)
        if self._parameters.get('sigma') is not None:
            SIGMA_OWNERS[self._parameters['sigma']] = weakref.ref(self)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.covariance_type != 'spherical':
            text += f", covariance_type='{self.covariance_type}'"
        if self.covariance_type == 'spherical':
            text += f', sigma_bounds=({self.sigma_bounds[0]:.4g}, {self.sigma_bounds[1]:.4g})'
        else:
            text += ', sigma_bounds=(' + ', '.join(f'({low:.4g}, {high:.4g})' for low, high in self.sigma_bounds) + ')'
        if not self.sigma.is_meta and self.sigma.numel():
            sigma = self.sigma.detach()
            text += f', sigma=[{float(sigma.min()):.3g}, {float(sigma.max()):.3g}]'
            if self.theta is not None:
                degrees = self.theta.detach() * (180 / math.pi)
                text += f', theta=[{float(degrees.min()):.3g}°, {float(degrees.max()):.3g}°]'
        if self._train_crop_tol is not None:
            text += f', train_crop_tol={self._train_crop_tol:g}, crop_window={self.crop_window}'
        return text


class AdaptiveConv1d(AdaptiveConvNd, nn.Conv1d):
    """1-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv1d`'s arguments plus
    those of :class:`AdaptiveConvNd` ('spherical' and 'diag' coincide in 1-D but for ``sigma``'s shape)."""

    dims = 1


class AdaptiveConv2d(AdaptiveConvNd, nn.Conv2d):
    """2-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv2d`'s arguments plus
    those of :class:`AdaptiveConvNd`."""

    dims = 2


class AdaptiveConv3d(AdaptiveConvNd, nn.Conv3d):
    """3-D convolution whose filters learn their own kernel size: :class:`torch.nn.Conv3d`'s arguments plus
    those of :class:`AdaptiveConvNd`."""

    dims = 3
