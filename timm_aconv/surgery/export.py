"""Deployment at the learned sizes: each adaptive filter becomes a plain convolution of its own size

:func:`export_learned_sizes` replaces every adaptive layer (1-D, 2-D, 3-D, any ``covariance_type``) by
plain convolutions in which each filter keeps only the centred window of its product kernel that
holds all but ``crop_tol`` of *its* energy (its learned size, see
:mod:`timm_aconv.surgery.learned_sizes`: a square for the paper's circular layers, a box with a side
per axis for the others). Filters of one size form one plain convolution (a bucket); the buckets'
outputs are concatenated (:class:`~timm_aconv.layers.MixedSizeConv`). A layer whose filters all need
one size becomes a single cropped convolution.

Every output stays where it was: each bucket's padding shrinks by ``dilation * (n - m) / 2`` per axis
(and where that would go below zero, e.g. ``padding='valid'``, the bucket trims its input
instead), so the exported layer computes exactly the convolution with the windowed kernel.
Bias, stride, dilation, padding modes and groups carry over; in a grouped or depthwise layer a
bucket takes the filters of one size from every group, reading only those groups' inputs.

Channel order: the concatenation puts the filters in bucket order. Where the following layers
allow it (``conv → BN → activation → conv``, see :mod:`timm_aconv.surgery.channel_order`), the
export permutes their input channels and BN statistics once (``fold_permutation=True``);
elsewhere the exported layer gathers its outputs back into the original order.

``strategy``: ``'bucketed'`` (default: one conv per size), ``'single'`` (one conv per layer at
its largest learned size: no concatenation, more multiply-adds), or ``'auto'`` (per layer, the
faster of the two, timed on the layer's input from ``example_inputs``).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers.adaptive_conv import AdaptiveConvNd
from ..layers.mixed_size_conv import MixedSizeConv, WindowConv1d, WindowConv2d, WindowConv3d
from ..layers.sigma import named_adaptive_layers
from ..layers.window import DEFAULT_CROP_TOL, check_crop_tol, explicit_padding
from ..utils.latency import round_robin_latency
from .channel_order import find_permutable_chains, permute_chain_
from .learned_sizes import check_sizes, filter_window_sizes
from .module_tree import replace_modules

__all__ = ['STRATEGIES', 'export_conv', 'export_learned_sizes']

STRATEGIES = ('bucketed', 'single', 'auto')
_PLAIN = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_WINDOWED = {1: WindowConv1d, 2: WindowConv2d, 3: WindowConv3d}


@dataclass
class _Bucket:
    window: Tuple[int, ...]  # the filters' window sides
    filters: torch.Tensor  # output channels, ascending
    conv_groups: List[int]  # the layer's groups whose inputs it reads


def _plan(windows: torch.Tensor, groups: int) -> List[_Bucket]:
    """One bucket per window (``windows``: (out, ndim)); in a grouped layer, per window and per number of filters
    that window has in a group."""
    per_group = windows.shape[0] // groups
    buckets = []
    for window in sorted(
        {tuple(row) for row in windows.tolist()}, key=lambda sides: (torch.Size(sides).numel(), sides)
    ):
        filters = torch.nonzero((windows == torch.tensor(window)).all(1)).flatten()
        if groups == 1:
            buckets.append(_Bucket(window, filters, [0]))
            continue
        counts = torch.bincount(filters // per_group, minlength=groups)
        for count in sorted(set(counts.tolist()) - {0}):
            conv_groups = torch.nonzero(counts == count).flatten().tolist()
            chosen = torch.isin(filters // per_group, torch.tensor(conv_groups))
            buckets.append(_Bucket(window, filters[chosen], conv_groups))
    return buckets


def _bucket_conv(layer: nn.Module, kernel: torch.Tensor, bucket: _Bucket) -> nn.Module:
    """A conv computing ``bucket``'s filters of ``layer`` (with product kernel ``kernel``) in its window."""
    trims = [(side - kept) // 2 for side, kept in zip(kernel.shape[2:], bucket.window)]
    padding, input_trim = [], []
    for pad, dilation, trim in zip(explicit_padding(layer), layer.dilation, trims):
        shrunk = pad - dilation * trim
        padding.append(max(shrunk, 0))
        input_trim.append(max(-shrunk, 0))
    groups = len(bucket.conv_groups)
    in_per_group = layer.in_channels // layer.groups
    input_index = None
    if layer.groups > 1 and bucket.conv_groups != list(range(layer.groups)):
        input_index = torch.cat(
            [torch.arange(g * in_per_group, (g + 1) * in_per_group, device=kernel.device) for g in bucket.conv_groups]
        )
    window = tuple(slice(trim, trim + kept) for trim, kept in zip(trims, bucket.window))
    weight = kernel[bucket.filters][(slice(None), slice(None), *window)]
    kwargs = dict(
        stride=layer.stride,
        padding=tuple(padding),
        dilation=layer.dilation,
        groups=groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    args = (in_per_group * groups, bucket.filters.numel(), bucket.window)
    ndim = len(bucket.window)
    if input_index is None and not any(input_trim):
        conv = _PLAIN[ndim](*args, **kwargs)
    else:
        conv = _WINDOWED[ndim](*args, input_index=input_index, input_trim=tuple(input_trim), **kwargs)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias[bucket.filters])
    return conv.train(layer.training).requires_grad_(layer.weight.requires_grad)


def _concat_order(buckets: Sequence[_Bucket]) -> torch.Tensor:
    return torch.cat([bucket.filters for bucket in buckets])


def _build(layer: nn.Module, kernel: torch.Tensor, buckets: List[_Bucket], gather: bool) -> nn.Module:
    if len(buckets) == 1:
        return _bucket_conv(layer, kernel, buckets[0])
    order = _concat_order(buckets)
    output_index = torch.argsort(order) if gather else None
    module = MixedSizeConv(
        [_bucket_conv(layer, kernel, bucket) for bucket in buckets],
        output_index,
        in_channels=layer.in_channels,
        groups=layer.groups,
    )
    return module.to(kernel.device).train(layer.training)


def _layer_kernel(layer: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return layer.product_kernel().detach() if isinstance(layer, AdaptiveConvNd) else layer.weight.detach()


def _plans(layer: nn.Module, kernel: torch.Tensor, crop_tol: float, sizes) -> Dict[str, List[_Bucket]]:
    """The buckets of each strategy: one per learned window, or all filters at the largest (per axis)."""
    square = layer.isotropic if isinstance(layer, AdaptiveConvNd) else len(set(kernel.shape[2:])) == 1
    windows = filter_window_sizes(kernel, crop_tol, sizes, square=square)
    return dict(
        bucketed=_plan(windows, layer.groups),
        single=_plan(windows.amax(0, keepdim=True).expand_as(windows), layer.groups),
    )


def export_conv(
    layer: nn.Module,
    crop_tol: float = DEFAULT_CROP_TOL,
    sizes: Optional[Sequence[int]] = None,
    strategy: str = 'bucketed',
) -> nn.Module:
    """One layer (adaptive, or a plain ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` with odd sides) exported at its
    filters' learned sizes; the output channels come out in the original order. ``strategy``: 'bucketed' or
    'single'."""
    crop_tol, sizes = check_crop_tol(crop_tol), check_sizes(sizes)
    if strategy not in ('bucketed', 'single'):
        raise ValueError(f"strategy must be 'bucketed' or 'single' for one layer, got {strategy!r}")
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or any(side % 2 == 0 for side in layer.kernel_size):
        raise ValueError(
            'layer must be an adaptive layer or an nn.Conv1d / nn.Conv2d / nn.Conv3d with odd kernel sides, '
            f'got {layer!r}'
        )
    kernel = _layer_kernel(layer)
    return _build(layer, kernel, _plans(layer, kernel, crop_tol, sizes)[strategy], gather=True)


def _layer_inputs(model: nn.Module, layers: Dict[str, AdaptiveConvNd], example_inputs) -> Dict[str, torch.Tensor]:
    inputs: Dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(lambda module, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name, layer in layers.items()
    ]
    try:
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, tuple) else model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def _faster_is_bucketed(
    layer: nn.Module,
    kernel: torch.Tensor,
    bucketed: List[_Bucket],
    single: List[_Bucket],
    x: torch.Tensor,
    gather: bool,
    rounds: int,
) -> bool:
    candidates = {
        name: _build(layer, kernel, buckets, gather).eval()
        for name, buckets in (('single', single), ('bucketed', bucketed))
    }

    def forward(module):
        def run():
            with torch.no_grad():
                output = module(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)  # time the kernels, not their launch
            return output

        return run

    timings = round_robin_latency({name: forward(module) for name, module in candidates.items()}, rounds=rounds)
    return timings['bucketed'].ratio < 1.0


def export_learned_sizes(
    model: nn.Module,
    crop_tol: float = DEFAULT_CROP_TOL,
    sizes: Optional[Sequence[int]] = None,
    strategy: str = 'bucketed',
    fold_permutation: bool = True,
    example_inputs: Union[torch.Tensor, Tuple, None] = None,
    timing_rounds: int = 5,
) -> nn.Module:
    """Replace every adaptive layer of ``model`` by plain convolutions at its filters' learned sizes, in place
    (see the module docstring).

    Args:
        model: a model with adaptive layers (a bare adaptive layer is returned exported).
        crop_tol: the share of each filter's product-kernel energy its window may leave out, in (0, 1).
            Removing energy share t from a layer's kernels changes its output by about sqrt(t)
            (relative L2 norm) for inputs with uncorrelated pixels.
        sizes: the allowed window sides (odd, e.g. (3, 5, 7)); each side of a filter's window is rounded up to
            one of them (fewer buckets); the grid's side is always allowed. None: every odd size.
        strategy: 'bucketed', 'single' or 'auto' (needs ``example_inputs``).
        fold_permutation: permute the following layers instead of gathering outputs where the graph
            allows it (False: always gather).
        example_inputs: model input(s) for ``strategy='auto'``; each layer is timed on its own input.
        timing_rounds: interleaved timing rounds per layer for ``strategy='auto'``.

    Returns:
        ``model`` (or the exported layer when ``model`` itself is adaptive), with no adaptive layer
        left; train/eval mode, device and dtype carry over.
    """
    crop_tol, sizes = check_crop_tol(crop_tol), check_sizes(sizes)
    if strategy not in STRATEGIES:
        raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
    if strategy == 'auto' and example_inputs is None:
        raise ValueError("strategy='auto' times each layer on its real input: pass example_inputs (a batch for model)")
    layers = {}
    for name, layer in named_adaptive_layers(model):
        layers.setdefault(layer, name)
    if not layers:
        raise ValueError(
            f'model has no adaptive layer ({type(model).__name__}) to export; '
            'for plain models use fuse_convs / crop_conv'
        )
    names = {name: layer for layer, name in layers.items()}
    kernels = {name: _layer_kernel(layer) for name, layer in names.items()}
    plans = {name: _plans(layer, kernels[name], crop_tol, sizes) for name, layer in names.items()}

    permuted = [name for name, plan in plans.items() if len(plan['bucketed']) > 1]
    chains = find_permutable_chains(model, permuted) if fold_permutation and names.get('') is None else {}

    if strategy == 'auto':
        inputs = _layer_inputs(model, names, example_inputs)
        chosen = {
            name: 'bucketed'
            if len(plan['bucketed']) > 1
            and name in inputs
            and _faster_is_bucketed(
                names[name],
                kernels[name],
                plan['bucketed'],
                plan['single'],
                inputs[name],
                name not in chains,
                timing_rounds,
            )
            else 'single'
            for name, plan in plans.items()
        }
    else:
        chosen = dict.fromkeys(plans, strategy)

    # fold first (it edits the following layers, which may be adaptive layers still to export)
    folded = set()
    modules = dict(model.named_modules(remove_duplicate=False))
    for name, chain in chains.items():
        if chosen[name] == 'bucketed':
            permute_chain_(model, chain, _concat_order(plans[name]['bucketed']))
            folded.add(name)
            consumer = modules[chain.consumer]
            if consumer in layers:  # an adaptive layer still to export: its input channels moved
                kernels[layers[consumer]] = _layer_kernel(consumer)
    replacements = {
        layer: _build(layer, kernels[name], plans[name][chosen[name]], gather=name not in folded)
        for name, layer in names.items()
    }
    return replace_modules(model, replacements)
