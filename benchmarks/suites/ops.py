"""The ops suite: compute operations (kernel launches on a GPU) per training step, counted with torch.profiler.

``aconv_resnet20`` vs ``conv_resnet20``, k=7, batch 8, foreach SGD: the extra operations per adaptive layer and
which they are (deterministic, unlike times), with the model's kernels computed together (the default) and layer
by layer (ungrouped); :func:`guards` checks both against their targets.
"""

import collections
import functools
from typing import Callable, Counter, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

import timm_aconv
from benchmarks.guards import Guard
from benchmarks.report import table_header
from benchmarks.steps import resnet20_pair, train_step_fn
from benchmarks.timing import quiet_stderr

OPS_PER_LAYER_TARGET = 3  # extra compute operations per adaptive layer per training step, kernels computed together
# the same with every layer computing its own kernel (a layer in no group): the formula (with the grid's squared
# distances from its offsets) and autograd's backward
OPS_PER_LAYER_UNGROUPED = 30
OPS_KERNEL_SIZE, OPS_BATCH, OPS_IMAGE_SIZE = 7, 8, 32
UNGROUPED_SUFFIX = ', ungrouped'  # the case of an operation count of the ungrouped model
# aten operations that launch no kernel: allocation and metadata (views are recognized by their schema)
NON_COMPUTE_OPS = frozenset(
    {
        'aten::empty',
        'aten::empty_strided',
        'aten::empty_like',
        'aten::resize_',
        'aten::as_strided_',
        'aten::result_type',
        'aten::is_nonzero',
        'aten::_local_scalar_dense',
        'aten::record_stream',
    }
)
OP_HEADER = (
    'case',
    'ops adaptive',
    'ops ordinary',
    'adaptive layers',
    'extra ops / layer',
    'CUDA kernels a/o',
    'extra ops (per layer; per model)',
)


@functools.cache
def is_compute_op(name: str) -> bool:
    """Whether a profiled event ``name`` does work on tensor data: an aten operation that is no
    allocation, metadata change or view (an operation whose result aliases its input)."""
    if not name.startswith('aten::') or name in NON_COMPUTE_OPS:
        return False
    packet = getattr(torch.ops.aten, name[len('aten::') :], None)
    if packet is None:
        return True
    for overload in packet.overloads():
        returns = getattr(packet, overload)._schema.returns
        if returns and returns[0].alias_info is not None and not returns[0].alias_info.is_write:
            return False
    return True


def count_compute_ops(events) -> Counter:
    """Compute operations in a profile, by name: the innermost compute operations (``mul`` of a
    tensor by a Python number runs as a ``copy_`` of the scalar inside it and counts once, under
    ``mul``: each is named after its outermost compute caller); a multi-tensor ``_foreach_*``
    operation counts once (one kernel on a GPU, a loop over tensors on a CPU)."""
    counts: Counter = collections.Counter()

    def walk(event, label: Optional[str]) -> int:
        if event.name.startswith('aten::_foreach_'):
            counts[event.name] += 1
            return 1
        compute = is_compute_op(event.name)
        label = label or (event.name if compute else None)
        inner = sum(walk(child, label) for child in event.cpu_children)
        if inner == 0 and compute:
            counts[label] += 1
            return 1
        return inner

    for event in events:
        if event.cpu_parent is None:
            walk(event, None)
    return counts


def profile_step(step: Callable[[], None], warmup: int = 2, cuda: bool = False) -> Tuple[Counter, int]:
    """Compute operations of one call of ``step`` after ``warmup`` calls, and its CUDA kernels."""
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with quiet_stderr(), profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    kernels = sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    return count_compute_ops(prof.events()), kernels


def op_overhead(
    adaptive: nn.Module, ordinary: nn.Module, batch: int, size: int, device: str = 'cpu', grouped: bool = True
) -> Dict:
    """Compute operations (and CUDA kernels on a GPU) of one foreach-SGD training step of each model,
    the extra operations per adaptive layer, and the per-layer difference by operation name.
    ``grouped``: the adaptive model computes its product kernels together (as registered and converted
    models do); False ungroups it first, so that each layer computes its own."""
    cuda = torch.device(device).type == 'cuda'
    if not grouped:
        timm_aconv.ungroup_adaptive_layers(adaptive)
    (adaptive_ops, adaptive_kernels), (ordinary_ops, ordinary_kernels) = (
        profile_step(train_step_fn(model, batch, size, device=device, foreach=True), cuda=cuda)
        for model in (adaptive, ordinary)
    )
    layers = sum(1 for _ in timm_aconv.adaptive_layers(adaptive))
    difference = {name: adaptive_ops[name] - ordinary_ops[name] for name in adaptive_ops | ordinary_ops}
    difference = dict(
        sorted(((name, count) for name, count in difference.items() if count), key=lambda item: (-item[1], item[0]))
    )
    total_adaptive, total_ordinary = sum(adaptive_ops.values()), sum(ordinary_ops.values())
    return dict(
        batch=batch,
        size=size,
        layers=layers,
        grouped=grouped,
        adaptive_ops=total_adaptive,
        ordinary_ops=total_ordinary,
        extra_ops_per_layer=round((total_adaptive - total_ordinary) / max(layers, 1), 2),
        adaptive_cuda_kernels=adaptive_kernels if cuda else None,
        ordinary_cuda_kernels=ordinary_kernels if cuda else None,
        difference=difference,
    )


def op_row(case: str, counts: Dict) -> Dict:
    """The row of one operation count (:func:`op_overhead`), printed as it comes."""
    result = dict(case=case, **counts)
    print(format_op_row(result), flush=True)
    return result


def format_op_row(result: Dict) -> str:
    kernels = (
        '–'
        if result['adaptive_cuda_kernels'] is None
        else f'{result["adaptive_cuda_kernels"]}/{result["ordinary_cuda_kernels"]}'
    )
    layers = result['layers'] or 1
    # counts split into what every layer adds and the rest (operations once per model)
    each = [
        f'{name.replace("aten::", "")} {count // layers}'
        for name, count in result['difference'].items()
        if count // layers
    ]
    shared = [
        f'{name.replace("aten::", "")} {count % layers}'
        for name, count in result['difference'].items()
        if count % layers
    ]
    per_layer = ', '.join(each) + (f'; per model: {", ".join(shared)}' if shared else '')
    return (
        f'| {result["case"]} | {result["adaptive_ops"]} | {result["ordinary_ops"]} | {result["layers"]} | '
        f'**{result["extra_ops_per_layer"]:g}** | {kernels} | {per_layer} |'
    )


def format_op_table(rows: List[Dict]) -> str:
    lines = [table_header(OP_HEADER), '|' + '---|' * len(OP_HEADER)]
    return '\n'.join(lines + [format_op_row(result) for result in rows])


def ops_cases() -> List[Dict]:
    rows = []
    for grouped in (True, False):
        adaptive, ordinary = resnet20_pair(OPS_KERNEL_SIZE)
        counts = op_overhead(adaptive, ordinary, OPS_BATCH, OPS_IMAGE_SIZE, grouped=grouped)
        rows.append(
            op_row(
                f'aconv_resnet20 vs conv_resnet20 k={OPS_KERNEL_SIZE} b{OPS_BATCH} '
                f'{OPS_IMAGE_SIZE}x{OPS_IMAGE_SIZE}{"" if grouped else UNGROUPED_SUFFIX}',
                counts,
            )
        )
    return rows


def guards(rows: List[Dict]) -> List[Guard]:
    """The extra operations per adaptive layer of each row of :func:`ops_cases` against its target
    (:data:`OPS_PER_LAYER_TARGET` with the kernels computed together, :data:`OPS_PER_LAYER_UNGROUPED` without)."""
    return [
        Guard(
            f'extra operations per adaptive layer of a training step, {result["case"]}',
            result['extra_ops_per_layer'],
            OPS_PER_LAYER_TARGET if result['grouped'] else OPS_PER_LAYER_UNGROUPED,
        )
        for result in rows
    ]
