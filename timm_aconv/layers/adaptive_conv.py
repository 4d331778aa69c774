"""Adaptive-size convolution (ACONV)

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.)

Every output filter owns an n×n weight ``W_q`` and one trainable aperture ``sigma_q``. A
normalized Gaussian envelope ``U(sigma_q)`` centred on the grid masks the weights before the
convolution, ``conv2d(x, W ∘ U)``, so each filter learns its own kernel size (see
:mod:`timm_aconv.layers.envelope` for the envelope's formula).

:class:`AdaptiveConv2d` is an :class:`torch.nn.Conv2d` subclass (state-dict keys ``weight``,
``bias``, ``sigma``): code that inspects convolutions keeps working, and every Conv2d option
(stride, dilation, groups, string padding, padding modes, bias, device/dtype) is supported.

Example::

    >>> conv = AdaptiveConv2d(3, 16, kernel_size=7, padding='same', sigma_init=(0.1, 0.5))
    >>> conv(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 16, 32, 32])
    >>> conv.envelope().shape, conv.product_kernel().shape
    (torch.Size([16, 7, 7]), torch.Size([16, 3, 7, 7]))
"""

import numbers
import weakref
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .covariance import (
    SIGMA_OWNERS,
    CovarianceEnvelope,
    SigmaInit,
    check_bounds_pair,
    check_covariance_type,
    envelope_parameters,
    resolve_kernel_sizes,
    resolve_sigma_init,
)
from .envelope import covariance_envelope, grid_sq_distance, softmax_envelope
from .kernel_group import KernelGroup, OptimizerSteps, stream_capturing
from .window import check_crop_tol, training_windows, window_conv2d

__all__ = [
    'CROPPING_LAYERS',
    'SIGMA_OWNERS',
    'TRAIN_CROP_INTERVAL',
    'TRAIN_CROP_MARGIN',
    'AdaptiveConv2d',
    'SigmaInit',
    'plain_conv_like',
    'resolve_kernel_size',
    'resolve_sigma_bounds',
    'resolve_sigma_init',
]

_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)  # torch >= 2.4
# layers with a train_crop_tol: the optimizer post-step hook of timm_aconv.layers.train_crop refreshes their windows
CROPPING_LAYERS: 'weakref.WeakSet[AdaptiveConv2d]' = weakref.WeakSet()
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


def _is_square(kernel_size) -> bool:
    return not isinstance(kernel_size, (tuple, list)) or len(set(kernel_size)) <= 1


def resolve_kernel_size(kernel_size: Union[int, Sequence[int]], name: str = 'kernel_size') -> int:
    """The base-grid size n of a square adaptive kernel; odd and >= 3 or a ValueError."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
            raise ValueError(f'{name} must be square (an int or (n, n)), got {tuple(kernel_size)}')
        kernel_size = kernel_size[0]
    if not isinstance(kernel_size, bool) and isinstance(kernel_size, numbers.Integral):
        size = int(kernel_size)
        if size >= 3 and size % 2 == 1:
            return size
    raise ValueError(f'{name} must be an odd integer >= 3 (3, 5, 7, 9, ...), got {kernel_size!r}')


def check_crop_interval(interval: int) -> int:
    """``train_crop_interval`` as a positive int, or a ValueError naming it."""
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or interval < 1:
        raise ValueError(f'train_crop_interval must be an integer >= 1 (optimizer steps), got {interval!r}')
    return int(interval)


def resolve_sigma_bounds(sigma_bounds: Optional[Tuple[float, float]], kernel_size: int) -> Tuple[float, float]:
    """``sigma_bounds`` as (low, high) with 0 < low < high; None is the paper's (1/n, n)."""
    if sigma_bounds is None:
        return 1.0 / kernel_size, float(kernel_size)
    return check_bounds_pair(sigma_bounds, 'sigma_bounds', ' or None for (1/n, n)')


class AdaptiveConv2d(CovarianceEnvelope, nn.Conv2d):
    """2D convolution whose filters learn their own kernel size.

    Takes every :class:`torch.nn.Conv2d` argument, plus:

    Args:
        sigma_init: initial apertures in normalized grid units (sigma = 1/n is about one pixel):
            a (low, high) pair spaced linearly over the output filters, or one value for all.
            Default (0.1, 0.5), the paper's setting for its networks.
        sigma_bounds: (low, high) range that :meth:`clamp_sigma_` keeps sigma in;
            None (default) is the paper's (1/n, n).
        train_crop_tol: None (default: off) or a share in (0, 1): in training the layer convolves
            with the centred crop of its product kernel to the smallest odd window (``train_window``)
            that holds all but this share of the energy of every filter's envelope and of its
            derivative in sigma, output unchanged in shape; evaluation, :meth:`fuse` and exports
            are unaffected. Spherical layers on square grids only.
        train_crop_interval: optimizer steps between two reads of sigma that choose the window
            (:mod:`timm_aconv.layers.train_crop`; the forward itself never reads sigma's values).
        covariance_type: the envelope's shape (:mod:`timm_aconv.layers.covariance`): 'spherical' (default,
            the paper's circle, ``sigma`` (out,)), 'diag' (an axis-aligned ellipse, ``sigma`` (out, 2) as
            (rows, columns)) or 'full' (an ellipse rotated by ``theta`` (out,), radians). With 'diag' and
            'full', ``sigma_bounds`` may give one (low, high) pair per axis.

    ``kernel_size`` may be rectangular (odd sides, e.g. ``(7, 3)``); grid coordinates are normalized per
    axis, so one sigma spans the same share of each side.

    The forward pass convolves with :meth:`product_kernel` (``weight * envelope``). In training
    the product kernels of all circular layers (``is_circular``: 'spherical' on a square grid, the
    paper's layer) of a model are computed together (:mod:`timm_aconv.layers.kernel_group`; a layer
    outside any group computes its own); the grid's squared distances are the non-persistent buffer
    ``sq_distance``. Every other layer computes its kernel with autograd by the formula of its
    ``covariance_type`` (its grid offsets are the non-persistent buffer ``grid_coordinates``). When the
    kernel needs no gradient (``torch.no_grad()``/``inference_mode``, e.g. evaluation, or frozen ``weight``
    and ``sigma``), the product kernel is cached until ``weight``, ``sigma`` or ``theta`` change (optimizer
    steps, in-place edits, ``load_state_dict``, ``.to()``, ``param.data = ...``).
    """

    __jit_ignored_attributes__ = (
        '_kernel_cache',
        '_kernel_group',
        'train_window',
        'train_crop_interval',
        'train_crop_margin',
        'train_crop_overruns',
        '_crop_read_step',
        '_crop_read_sigma',
        '_train_crop_tol',
        '_crop_margin_scale',
    )
    __jit_unused_properties__ = ('train_crop_tol',)
    _kernel_group: Optional[KernelGroup] = None  # set by KernelGroup.attach
    is_circular: bool = True  # 'spherical' on a square grid (the paper's layer, with its fast training paths)
    _group_index: int = 0
    # training at the learned size (class defaults: layers pickled before these existed)
    _train_crop_tol: Optional[float] = None
    train_window: Optional[int] = None  # the window the training forward convolves with (None: the full grid)
    train_crop_interval: int = TRAIN_CROP_INTERVAL
    train_crop_margin: float = TRAIN_CROP_MARGIN
    train_crop_overruns: int = 0  # reads that found the window in use too small for the tolerance
    _crop_read_step: int = 0
    _crop_read_sigma: Optional[torch.Tensor] = None
    _crop_margin_scale: float = 1.0  # doubles after each overrun

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Union[str, int, Tuple[int, int]] = 0,
        dilation: Union[int, Tuple[int, int]] = 1,
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
        check_covariance_type(covariance_type, 2, 'AdaptiveConv2d')
        circular = covariance_type == 'spherical' and _is_square(kernel_size)
        if circular:
            size = resolve_kernel_size(kernel_size)
            sizes = (size, size)
            sigma_init = resolve_sigma_init(sigma_init)
            sigma_bounds = resolve_sigma_bounds(sigma_bounds, size)
        else:
            sizes = resolve_kernel_sizes(kernel_size, 2)
        super().__init__(
            in_channels,
            out_channels,
            sizes,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.is_circular = circular
        self._kernel_cache = None
        if circular:
            self.covariance_type = 'spherical'
            self.sigma_init, self.sigma_bounds = sigma_init, sigma_bounds
            self.sigma = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
            self.register_parameter('theta', None)
            self.register_buffer('sq_distance', torch.empty(sizes, device=device, dtype=self.weight.dtype), False)
            self.register_buffer('grid_coordinates', None, persistent=False)
            self.init_non_persistent_buffers()
            self.reset_sigma()
        else:
            self.register_buffer('sq_distance', None, persistent=False)
            self._setup_covariance(covariance_type, sigma_init, sigma_bounds, sizes, device, dtype)
        self.train_crop_interval = check_crop_interval(train_crop_interval)
        self.train_crop_tol = train_crop_tol

    @property
    def train_crop_tol(self) -> Optional[float]:
        """The energy share the training forward's crop may drop (None: no crop, the paper's layer)."""
        return self._train_crop_tol

    @train_crop_tol.setter
    def train_crop_tol(self, value: Optional[float]) -> None:
        if value is not None and not self.is_circular:
            raise ValueError(
                f'train_crop_tol crops spherical layers on square grids only; this layer is '
                f"covariance_type='{self.covariance_type}' on a {self.kernel_size} grid (it trains on its full grid)"
            )
        self._train_crop_tol = None if value is None else check_crop_tol(value, 'train_crop_tol')
        if self.train_window is not None and self._kernel_group is not None:
            self._kernel_group.reset()
        self.train_window = None
        self._crop_read_sigma = None
        self._crop_margin_scale = 1.0
        if value is None:
            CROPPING_LAYERS.discard(self)
        else:
            CROPPING_LAYERS.add(self)
            self.refresh_train_window()

    @torch.jit.unused
    def refresh_train_window(self) -> Optional[int]:
        """Reads sigma (one host synchronisation) and sets ``train_window``, the window of the
        training forward until the next read: the smallest centred odd window holding all but
        ``train_crop_tol`` of the energy of every filter's envelope U and of its derivative dU/dsigma
        (so that the kernel and dL/dsigma each change by about sqrt(tol) at most), planned for
        apertures that have grown on: the current ones plus twice their growth per step since the
        previous read over the next ``train_crop_interval`` steps, widened by ``train_crop_margin``.
        A read that finds the window in use too small for the current apertures counts in
        ``train_crop_overruns`` and doubles the layer's margin from then on. Called every
        ``train_crop_interval`` optimizer steps (:mod:`timm_aconv.layers.train_crop`), when the
        tolerance is set and after ``load_state_dict``; returns the window (None: no crop set, or
        sigma on the meta device)."""
        if self._train_crop_tol is None or self.sigma.is_meta:
            return None
        with torch.no_grad():
            sigma = self.sigma.detach().float().clone()  # kept: the parameter changes in place
            steps = OptimizerSteps.count
            planned = sigma
            previous = self._crop_read_sigma
            if previous is not None and previous.shape == sigma.shape and steps > self._crop_read_step:
                # twice the growth per step seen since the previous read, over the next interval
                growth = (sigma - previous.to(sigma.device)).clamp_min(0)
                planned = sigma + growth * (2 * self.train_crop_interval / (steps - self._crop_read_step))
            planned = planned * (1 + self.train_crop_margin * self._crop_margin_scale)
            sq_distance = self.sq_distance.float()
            needed = training_windows(torch.cat([sigma, planned]), sq_distance, self._train_crop_tol)
            needed = needed.view(2, -1).amax(1)  # the layer's window: its widest filter's, now and planned
            current, window = (int(value) for value in needed.tolist())  # the one read
        if self.train_window is not None and current > self.train_window:
            self.train_crop_overruns += 1
            self._crop_margin_scale *= 2  # the apertures moved faster than planned: plan wider from now on
        changed = window != self.train_window
        self.train_window = window
        if changed and self._kernel_group is not None:
            self._kernel_group.reset()  # plan the group's families for the new window (outside any compiled code)
        self._crop_read_step, self._crop_read_sigma = steps, sigma
        return window

    @property
    def grid_size(self) -> int:
        """The base-grid size n: the side of a square grid (n×n), the largest side of a rectangular one."""
        return max(self.kernel_size)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, 'sigma', None) is not None:
            self.reset_sigma()

    def init_non_persistent_buffers(self) -> None:
        """Fill ``sq_distance`` or ``grid_coordinates`` (also after ``to_empty()``; timm's
        ``reinit_non_persistent_buffers``)."""
        if self.grid_coordinates is not None:
            super().init_non_persistent_buffers()
            return
        with torch.no_grad():
            self.sq_distance.copy_(grid_sq_distance(self.grid_size, self.sq_distance.device, self.sq_distance.dtype))

    def envelope(self) -> torch.Tensor:
        """The normalized envelopes U, shape (out_channels, *kernel_size), differentiable in sigma (and theta)."""
        coordinates = self.grid_coordinates
        if coordinates is not None:
            return covariance_envelope(self.sigma, self.theta, coordinates.to(self.sigma.dtype))
        return softmax_envelope(self.sigma, self.sq_distance.to(self.sigma.dtype))

    def product_kernel(self) -> torch.Tensor:
        """The effective kernel ``W ∘ U`` the layer convolves with, shape of ``weight``, differentiable
        with autograd (this layer alone; the training forward computes its model's kernels together)."""
        dtype = self.weight.dtype
        coordinates = self.grid_coordinates
        if coordinates is not None:
            theta = self.theta
            if theta is not None:
                theta = theta.to(dtype)
            return self.weight * covariance_envelope(self.sigma.to(dtype), theta, coordinates.to(dtype)).unsqueeze(1)
        return self.weight * softmax_envelope(self.sigma.to(dtype), self.sq_distance.to(dtype)).unsqueeze(1)

    @torch.jit.unused
    def _training_kernel(self) -> torch.Tensor:
        """:meth:`product_kernel` for a forward that records gradients: taken from the layer's group."""
        if torch.compiler.is_compiling():
            if _is_exporting():
                return self.product_kernel()
            group = self._kernel_group
            if group is None:
                group = KernelGroup([self])
            return group.traced_kernel(self._group_index)
        if torch._C._are_functorch_transforms_active():  # torch.func: batched or wrapped parameters
            return self.product_kernel()
        group = self._kernel_group
        if group is None:
            group = KernelGroup([self])
        return group.kernel(self, self._group_index)

    @torch.jit.unused
    def _cached_product_kernel(self) -> torch.Tensor:
        """:meth:`product_kernel` without autograd, recomputed only when weight or sigma changed.

        The key holds what identifies the parameters' contents: storage address, version counter
        (bumped by every in-place change: optimizer steps, ``mul_``, ``copy_``, ``load_state_dict``),
        dtype, device, shape and strides (``param.data = ...`` swaps the storage), and the count of
        optimizer steps (fused optimizers do not bump version counters). The cache keeps the keyed
        tensors alive, so a freed address cannot come back under a stale key. A kernel made under
        ``inference_mode`` (an inference tensor) is only reused there. Not seen: in-place edits
        through ``param.data`` (a tensor with its own version counter), as autograd does not see them
        either; edit under ``torch.no_grad()`` instead.
        """
        tensors = (self.weight, *envelope_parameters(self))
        weight = tensors[0]
        try:
            key = (
                *tuple(
                    (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device, tensor.shape, tensor.stride())
                    for tensor in tensors
                ),
                torch.is_inference_mode_enabled(),
                OptimizerSteps.count,
            )
        except RuntimeError:
            # no storage (torch.func.vmap over parameters) or no version counter (inference tensors)
            return self.product_kernel().detach()
        if stream_capturing(weight):  # a CUDA graph capture: nothing kept from or for other calls
            return self.product_kernel().detach()
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            self._kernel_cache = (key, self.product_kernel().detach(), tuple(tensor.detach() for tensor in tensors))
        return self._kernel_cache[1]

    def _invalidate_cache(self) -> None:
        self._kernel_cache = None
        if self._kernel_group is not None:
            self._kernel_group.invalidate()

    def _apply(self, fn, recurse=True):
        self._invalidate_cache()
        module = super()._apply(fn, recurse)
        self.init_non_persistent_buffers()  # to_empty() leaves it uninitialized
        if self._kernel_group is not None:
            self._kernel_group.reset()  # devices or dtypes may have changed
        return module

    def _load_from_state_dict(self, *args, **kwargs):
        self._invalidate_cache()
        super()._load_from_state_dict(*args, **kwargs)
        if self._train_crop_tol is not None:  # a resume: the window of the loaded apertures
            self._crop_read_sigma = None
            self.refresh_train_window()

    def __setstate__(self, state):
        group = state.pop('_kernel_group', None)  # a copied group starts empty: each copied member joins it
        super().__setstate__(state)
        if 'sq_distance' not in self._buffers:  # a layer pickled before the buffer existed
            self.register_buffer(
                'sq_distance',
                torch.empty(self.kernel_size, device=self.weight.device, dtype=self.weight.dtype),
                persistent=False,
            )
            self.init_non_persistent_buffers()
        self._parameters.setdefault('theta', None)  # pickled before 'diag' / 'full' existed
        self._buffers.setdefault('grid_coordinates', None)
        if group is not None:
            group.add([self])
        if self._train_crop_tol is not None:
            CROPPING_LAYERS.add(self)
        if self._parameters.get('sigma') is not None:
            SIGMA_OWNERS[self._parameters['sigma']] = weakref.ref(self)

    def __getstate__(self):
        # copies and pickles start without a cache (a restored storage could share a stale key); the
        # group travels as an empty group that the copied members of the same group join (a layer copied
        # alone is alone in its copy of the group)
        state = self.__dict__.copy()
        state['_kernel_cache'] = None
        state.pop('_group_index', None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            kernel = self.product_kernel()
        elif torch.is_grad_enabled():
            return self._grad_mode_forward(x)
        elif torch.compiler.is_compiling():
            kernel = self.product_kernel()
        else:
            kernel = self._cached_product_kernel()
        return self._conv_forward(x, kernel, self.bias)

    @torch.jit.unused
    def _grad_mode_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward with gradients enabled. Its first branch is a training step's path: a few attribute
        reads, then the kernel the layer's group computed for all its members (taken while valid)."""
        group = self._kernel_group
        params = self._parameters
        weight, sigma = params.get('weight'), params.get('sigma')
        if (
            group is not None
            and self._train_crop_tol is None
            and weight is not None
            and sigma is not None
            and (weight.requires_grad or sigma.requires_grad)
            and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()
        ):
            bias = params['bias'] if 'bias' in params else self.bias  # noqa: SIM401 (self.bias only if needed)
            return self._conv_forward(x, group.kernel(self, self._group_index), bias)
        if self.weight.requires_grad or self.sigma.requires_grad or not self.is_circular:
            return self._training_forward(x)
        kernel = self.product_kernel() if torch.compiler.is_compiling() else self._cached_product_kernel()
        return self._conv_forward(x, kernel, self.bias)

    def training_window(self) -> int:
        """The window side the training forward convolves with: ``train_window`` in training mode with
        ``train_crop_tol`` set (once chosen), else the grid size n."""
        window = self.train_window
        if window is None or not self.training or self._train_crop_tol is None:
            return self.kernel_size[0]
        return window

    @torch.jit.unused
    def _training_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward that records gradients: with the product kernel the layer's group computed, or
        in training mode with ``train_crop_tol`` set, with its centred ``train_window`` crop (the group
        then multiplies only the window of the weights and of the envelope); any other than a circular
        layer with the product kernel of its own formula, computed with autograd."""
        if not self.is_circular:
            return self._conv_forward(x, self.product_kernel(), self.bias)
        if (
            self._train_crop_tol is not None
            and self.train_window is None
            and self.training
            and not torch.compiler.is_compiling()
        ):
            self.refresh_train_window()  # set while sigma was on the meta device
        kernel = self._training_kernel()
        if kernel.shape[-1] < self.kernel_size[0]:
            return window_conv2d(self, x, kernel, self.bias)
        return self._conv_forward(x, kernel, self.bias)

    def fuse(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` holding the product kernel (same outputs).

        Named ``fuse`` so that ``timm.utils.reparameterize_model`` fuses adaptive layers.
        """
        with torch.no_grad():
            return plain_conv_like(self, self.product_kernel())

    def extra_repr(self) -> str:
        if not self.is_circular:
            return super().extra_repr() + self._covariance_repr()
        text = super().extra_repr() + f', sigma_bounds=({self.sigma_bounds[0]:.4g}, {self.sigma_bounds[1]:.4g})'
        if not self.sigma.is_meta and self.sigma.numel():
            sigma = self.sigma.detach()
            text += f', sigma=[{float(sigma.min()):.3g}, {float(sigma.max()):.3g}]'
        if self._train_crop_tol is not None:
            text += f', train_crop_tol={self._train_crop_tol:g}, train_window={self.train_window}'
        return text
