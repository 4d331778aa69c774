"""Model surgery: ordinary convolutions → adaptive ones (``nn.Conv2d`` → :class:`AdaptiveConv2d`; with
``dims``, ``nn.Conv1d`` / ``nn.Conv3d`` → :class:`AdaptiveConv1d` / :class:`AdaptiveConv3d`)

    >>> model = smp.Unet('resnet34', encoder_weights=None)
    >>> convert_convs(model, sizes=[7], include=['encoder.conv1'])   # only the first conv

With ``preserve=True`` (default) the converted model computes the same function at the moment
of conversion: the original k×k kernel is centred in the n×n grid and divided by the envelope
there, the rest of the grid starts at zero, and padding grows by ``dilation * (n - k) / 2`` so
every output keeps its position and shape (per axis, for any dimension).
"""

import fnmatch
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConv1d, AdaptiveConv2d, AdaptiveConv3d, AdaptiveConvNd
from ..layers.covariance import SigmaInit, check_covariance_type, resolve_kernel_size, resolve_kernel_sizes
from ..layers.window import explicit_padding
from .module_tree import replace_modules

__all__ = ['PRESERVE_SIGMA_INIT', 'convert_conv', 'convert_convs']

# a wide envelope at conversion keeps the division by U mild (weights are rescaled by at most
# ~e on a 7×7 grid) and lets training shrink the kernels from the original size
PRESERVE_SIGMA_INIT = 0.5
FRESH_SIGMA_INIT = (0.1, 0.5)

FilterFn = Callable[[str, nn.Conv2d], bool]
# the ordinary convolution of each dimension and its adaptive layer
_PLAIN = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_ADAPTIVE = {1: AdaptiveConv1d, 2: AdaptiveConv2d, 3: AdaptiveConv3d}


def _shape(conv: nn.Module) -> str:
    return 'x'.join(map(str, conv.kernel_size))


def _converted_padding(conv: nn.Conv2d, sides: Tuple[int, ...], name: str) -> Tuple[int, ...]:
    padding = []
    for pad, dil, k, size in zip(explicit_padding(conv), conv.dilation, conv.kernel_size, sides):
        if (size - k) % 2:
            raise ValueError(
                f"convert_convs: layer '{name}' has a {k}-wide kernel; it can only become an odd n×n "
                f'adaptive kernel with its taps kept in place when k is odd (got sizes value {size}). '
                f"Exclude it (exclude=['{name}'])."
            )
        new_pad = pad + dil * (size - k) // 2
        if new_pad < 0:
            raise ValueError(
                f"convert_convs: layer '{name}' ({_shape(conv)}, padding {conv.padding}) "
                f'cannot shrink to {size} per side without changing its output shape; use a size >= '
                f'{max(conv.kernel_size) - 2 * pad // dil}'
            )
        padding.append(new_pad)
    return tuple(padding)


def convert_conv(
    conv: nn.Conv2d,
    size: Union[int, Sequence[int], None] = None,
    preserve: bool = True,
    sigma_init: Optional[SigmaInit] = None,
    sigma_bounds=None,
    name: str = 'conv',
    covariance_type: str = 'spherical',
) -> nn.Module:
    """The adaptive layer with an n-per-side grid (or, ``size`` a tuple, the grid of those sides) replacing
    ``conv`` (``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``; see :func:`convert_convs`)."""
    ndim = len(conv.kernel_size)
    if type(conv) is not _PLAIN.get(ndim):
        raise TypeError(f'convert_conv takes an nn.Conv1d, nn.Conv2d or nn.Conv3d, got {type(conv).__name__}')
    check_covariance_type(covariance_type, ndim, f"layer '{name}' ({_ADAPTIVE[ndim].__name__})")
    if size is None and (max(conv.kernel_size) < 3 or max(conv.kernel_size) % 2 == 0):
        raise ValueError(
            f"convert_convs: layer '{name}' has a {_shape(conv)} kernel, which "
            f'sizes=None would keep, but adaptive kernels need an odd size >= 3; give sizes or exclude it'
        )
    if isinstance(size, (tuple, list)) and len(set(size)) > 1:
        sides = resolve_kernel_sizes(size, ndim, name='sizes')
    else:
        side = size[0] if isinstance(size, (tuple, list)) and len(size) == ndim else size
        sides = (resolve_kernel_size(max(conv.kernel_size) if side is None else side, name='sizes'),) * ndim
    if preserve and any(side < k for side, k in zip(sides, conv.kernel_size)):
        raise ValueError(
            f"convert_convs: layer '{name}' has a {_shape(conv)} kernel; preserve=True needs sizes >= "
            + (
                f'{max(conv.kernel_size)}, got {sides[0]}'
                if len(set(sides)) == 1
                else f'{_shape(conv)}, got {"x".join(map(str, sides))}'
            )
            + ' (or pass preserve=False)'
        )
    if sigma_init is None:
        sigma_init = PRESERVE_SIGMA_INIT if preserve else FRESH_SIGMA_INIT
    weight = conv.weight
    layer = _ADAPTIVE[ndim](
        conv.in_channels,
        conv.out_channels,
        sides,
        stride=conv.stride,
        padding=_converted_padding(conv, sides, name),
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
        sigma_init=sigma_init,
        sigma_bounds=sigma_bounds,
        covariance_type=covariance_type,
    )
    if preserve:
        with torch.no_grad():
            window = tuple(slice((side - k) // 2, (side - k) // 2 + k) for side, k in zip(sides, conv.kernel_size))
            envelope = layer.envelope()[(slice(None), *window)].unsqueeze(1)
            layer.weight.zero_()
            layer.weight[(slice(None), slice(None), *window)] = weight / envelope
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
    layer.weight.requires_grad_(weight.requires_grad)
    layer.sigma.requires_grad_(weight.requires_grad)
    if conv.bias is not None:
        layer.bias.requires_grad_(conv.bias.requires_grad)
    return layer.train(conv.training)


def _matches(names: Sequence[str], patterns: Optional[Sequence[str]]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def _as_patterns(patterns, arg: str) -> Optional[List[str]]:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f'{arg} must be a list of fnmatch patterns (str), got {patterns!r}')
    return list(patterns)


def _describe(names: Dict[nn.Module, List[str]], limit: int = 40) -> str:
    rows = [f'{aliases[0]} ({"x".join(map(str, conv.kernel_size))})' for conv, aliases in names.items()]
    more = f', ... ({len(rows) - limit} more)' if len(rows) > limit else ''
    return ', '.join(rows[:limit]) + more if rows else '(none)'


def convert_convs(
    model: nn.Module,
    sizes: Union[int, Sequence[int], None] = (7,),
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    filter_fn: Optional[FilterFn] = None,
    preserve: bool = True,
    sigma_init: Optional[SigmaInit] = None,
    sigma_bounds: Optional[Tuple[float, float]] = None,
    skip_pointwise: bool = True,
    dims: Sequence[int] = (2,),
    covariance_type: str = 'spherical',
) -> nn.Module:
    """Replace chosen ``nn.Conv2d`` layers of ``model`` by :class:`AdaptiveConv2d`, in place (and, with
    ``dims``, ``nn.Conv1d`` / ``nn.Conv3d`` layers by :class:`AdaptiveConv1d` / :class:`AdaptiveConv3d`).

    Args:
        model: any module (a bare ``nn.Conv2d`` is returned converted).
        sizes: adaptive grid size n: one value for every chosen layer, one per chosen layer in
            module order, or None to keep each layer's own size. A value may be a tuple of odd sides
            (``[(7, 3)]``: a rectangular grid).
        include: fnmatch patterns on qualified module names; a layer is chosen when one of its
            names matches (None: every conv).
        exclude: fnmatch patterns of layers to leave alone.
        filter_fn: ``filter_fn(name, conv) -> bool``, a further test every chosen layer must pass.
        preserve: keep the model's function at conversion (see the module docstring); False
            initializes the adaptive layers afresh.
        sigma_init: apertures of the new layers; default 0.5 with ``preserve`` (a wide envelope:
            mild rescaling), else the paper's (0.1, 0.5).
        sigma_bounds: clamp range, default (1/n, n) (per axis for 'diag' / 'full': one pair, or one per axis).
        skip_pointwise: leave 1×1 convolutions alone.
        dims: the dimensions converted: (2,) (default) is ``nn.Conv2d`` only (a model's ``nn.Conv1d``, e.g.
            an ECA attention, stays); (1,), (3,) or (1, 2, 3) take ``nn.Conv1d`` / ``nn.Conv3d`` too.
        covariance_type: the envelope of the new layers (:mod:`timm_aconv.layers.covariance`): 'spherical'
            (default, one sigma per filter), 'diag' (one per filter and axis) or 'full' (2-D: a rotated
            ellipse, with an angle ``theta`` per filter).

    Only layers whose type is exactly ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` are candidates: adaptive
    layers are left as they are (a second call is a no-op) and subclasses keep their own semantics.
    Device, dtype, ``requires_grad`` and train/eval mode carry over; a module shared under
    several names becomes one adaptive module under all of them.

    Returns:
        ``model`` (or the new layer when ``model`` itself is a converted ``nn.Conv2d``).
    """
    include, exclude = _as_patterns(include, 'include'), _as_patterns(exclude, 'exclude')
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if not dims or any(dim not in _PLAIN for dim in dims):
        raise ValueError(f'dims must name convolution dimensions among 1, 2, 3, got {dims!r}')
    plain_types = tuple(_PLAIN[dim] for dim in dims)
    adaptive_types = tuple(_ADAPTIVE[dim] for dim in dims)
    aliases: Dict[nn.Module, List[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) in plain_types or isinstance(module, adaptive_types):
            aliases.setdefault(module, []).append(name)

    chosen, already_adaptive = {}, 0
    for conv, names in aliases.items():
        if skip_pointwise and all(size == 1 for size in conv.kernel_size):
            continue
        if include is not None and not _matches(names, include):
            continue
        if exclude is not None and _matches(names, exclude):
            continue
        if filter_fn is not None and not filter_fn(names[0], conv):
            continue
        if isinstance(conv, AdaptiveConvNd):
            already_adaptive += 1
        else:
            chosen[conv] = names

    if not chosen:
        if already_adaptive:
            return model  # everything chosen is adaptive already: converting again is a no-op
        raise ValueError(
            f'convert_convs selected no layer (include={include}, exclude={exclude}, '
            f'filter_fn={filter_fn}, skip_pointwise={skip_pointwise}). Convolution layers in this model: '
            f'{_describe(aliases)}'
        )

    if sizes is None or isinstance(sizes, int):
        per_layer = [sizes] * len(chosen)
    else:
        sizes = list(sizes)
        if len(sizes) == 1:
            per_layer = sizes * len(chosen)
        elif len(sizes) == len(chosen):
            per_layer = sizes
        else:
            raise ValueError(
                f'convert_convs: sizes has {len(sizes)} values but {len(chosen)} layers were chosen; give one '
                f'value or one per chosen layer, in this order: {[names[0] for names in chosen.values()]}'
            )

    replacements = {
        conv: convert_conv(
            conv,
            size,
            preserve=preserve,
            sigma_init=sigma_init,
            sigma_bounds=sigma_bounds,
            name=names[0],
            covariance_type=covariance_type,
        )
        for (conv, names), size in zip(chosen.items(), per_layer)
    }
    return replace_modules(model, replacements)
