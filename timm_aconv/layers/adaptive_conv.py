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
from torch.utils.weak import WeakIdKeyDictionary

from .envelope import grid_sq_distance, softmax_envelope
from .kernel_group import KernelGroup, OptimizerSteps, stream_capturing

__all__ = [
    'SIGMA_OWNERS',
    'AdaptiveConv2d',
    'SigmaInit',
    'resolve_kernel_size',
    'resolve_sigma_bounds',
    'resolve_sigma_init',
]

SigmaInit = Union[float, Tuple[float, float]]
_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)  # torch >= 2.4
# each sigma parameter -> (a weak reference to) its layer: how a post-step hook that sees only an optimizer's
# parameters finds their bounds (timm_aconv.layers.sigma)
SIGMA_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


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


def resolve_sigma_bounds(sigma_bounds: Optional[Tuple[float, float]], kernel_size: int) -> Tuple[float, float]:
    """``sigma_bounds`` as (low, high) with 0 < low < high; None is the paper's (1/n, n)."""
    if sigma_bounds is None:
        return 1.0 / kernel_size, float(kernel_size)
    if not isinstance(sigma_bounds, (tuple, list)) or len(sigma_bounds) != 2:
        raise ValueError(f'sigma_bounds must be a (low, high) pair or None for (1/n, n), got {sigma_bounds!r}')
    low, high = float(sigma_bounds[0]), float(sigma_bounds[1])
    if not 0 < low < high:
        raise ValueError(f'sigma_bounds must satisfy 0 < low < high, got {sigma_bounds!r}')
    return low, high


class AdaptiveConv2d(nn.Conv2d):
    """2D convolution whose filters learn their own kernel size.

    Takes every :class:`torch.nn.Conv2d` argument, plus:

    Args:
        sigma_init: initial apertures in normalized grid units (sigma = 1/n is about one pixel):
            a (low, high) pair spaced linearly over the output filters, or one value for all.
            Default (0.1, 0.5), the paper's setting for its networks.
        sigma_bounds: (low, high) range that :meth:`clamp_sigma_` keeps sigma in;
            None (default) is the paper's (1/n, n).

    The forward pass convolves with :meth:`product_kernel` (``weight * envelope``). In training
    the product kernels of all adaptive layers of a model are computed together
    (:mod:`timm_aconv.layers.kernel_group`; a layer outside any group computes its own), with
    dL/dsigma in closed form; the grid's squared distances are the non-persistent buffer
    ``sq_distance``. When the kernel needs no gradient
    (``torch.no_grad()``/``inference_mode``, e.g. evaluation, or frozen ``weight`` and ``sigma``),
    the product kernel is cached until ``weight`` or ``sigma`` change (optimizer steps, in-place
    edits, ``load_state_dict``, ``.to()``, ``param.data = ...``).
    """

    __jit_ignored_attributes__ = ('_kernel_cache', '_kernel_group')
    _kernel_group: Optional[KernelGroup] = None  # set by KernelGroup.attach
    _group_index: int = 0

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
        sigma_bounds: Optional[Tuple[float, float]] = None,
    ):
        size = resolve_kernel_size(kernel_size)
        self.sigma_init = resolve_sigma_init(sigma_init)
        self.sigma_bounds = resolve_sigma_bounds(sigma_bounds, size)
        super().__init__(
            in_channels,
            out_channels,
            size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.sigma = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        self.register_buffer(
            'sq_distance', torch.empty(size, size, device=device, dtype=self.weight.dtype), persistent=False
        )
        self._kernel_cache = None
        self.init_non_persistent_buffers()
        self.reset_sigma()

    @property
    def grid_size(self) -> int:
        """The base-grid size n (the kernel is n×n)."""
        return self.kernel_size[0]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, 'sigma', None) is not None:
            self.reset_sigma()

    def init_non_persistent_buffers(self) -> None:
        """Fill ``sq_distance`` (also after ``to_empty()``; timm's ``reinit_non_persistent_buffers``)."""
        with torch.no_grad():
            self.sq_distance.copy_(grid_sq_distance(self.grid_size, self.sq_distance.device, self.sq_distance.dtype))

    def reset_sigma(self) -> None:
        """Spread sigma linearly over the filters across ``sigma_init``."""
        low, high = self.sigma_init
        with torch.no_grad():
            self.sigma.copy_(torch.linspace(low, high, self.out_channels, dtype=self.sigma.dtype))

    def clamp_sigma_(self) -> 'AdaptiveConv2d':
        """Clip sigma in place into ``sigma_bounds`` (the paper does it after every update)."""
        with torch.no_grad():
            self.sigma.clamp_(*self.sigma_bounds)
        return self

    def envelope(self) -> torch.Tensor:
        """The normalized envelopes U, shape (out_channels, n, n), differentiable in sigma."""
        return softmax_envelope(self.sigma, self.sq_distance.to(self.sigma.dtype))

    def product_kernel(self) -> torch.Tensor:
        """The effective kernel ``W ∘ U`` the layer convolves with, shape of ``weight``, differentiable
        with autograd (this layer alone; the training forward computes its model's kernels together)."""
        dtype = self.weight.dtype
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
        weight, sigma = self.weight, self.sigma
        try:
            key = (
                *tuple(
                    (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device, tensor.shape, tensor.stride())
                    for tensor in (weight, sigma)
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
            self._kernel_cache = (key, self.product_kernel().detach(), (weight.detach(), sigma.detach()))
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

    def register_parameter(self, name: str, param: Optional[nn.Parameter]) -> None:
        super().register_parameter(name, param)
        if name == 'sigma' and param is not None:
            SIGMA_OWNERS[param] = weakref.ref(self)

    def _load_from_state_dict(self, *args, **kwargs):
        self._invalidate_cache()
        super()._load_from_state_dict(*args, **kwargs)

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
        if group is not None:
            group.add([self])
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
        elif torch.is_grad_enabled() and (self.weight.requires_grad or self.sigma.requires_grad):
            kernel = self._training_kernel()
        elif torch.compiler.is_compiling():
            kernel = self.product_kernel()
        else:
            kernel = self._cached_product_kernel()
        return self._conv_forward(x, kernel, self.bias)

    def fuse(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` holding the product kernel (same outputs).

        Named ``fuse`` so that ``timm.utils.reparameterize_model`` fuses adaptive layers.
        """
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.product_kernel())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            conv.bias.requires_grad_(self.bias.requires_grad)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        text = super().extra_repr() + f', sigma_bounds=({self.sigma_bounds[0]:.4g}, {self.sigma_bounds[1]:.4g})'
        if not self.sigma.is_meta and self.sigma.numel():
            sigma = self.sigma.detach()
            text += f', sigma=[{float(sigma.min()):.3g}, {float(sigma.max()):.3g}]'
        return text
