"""The dispatch suite: the host-bound regime of a GPU step, measured on the CPU.

Twin ResNets 20 and 56 with tiny widths (2, 4, 8), 3x3 grids, batch 1 at 8x8, one thread, so that the arithmetic
vanishes and what remains is per-step Python, autograd and dispatch work. Train-step ratios (model as registered;
its layers ungrouped, each computing its own kernel; an ordinary twin against itself as the noise floor; both
compiled; the floor of one more parameter per layer, eager and compiled), autograd nodes per step and, compiled,
the kernels inductor generates (``torch._inductor.metrics``) and the calls of generated functions per step
(``torch.profiler``). :func:`guards` checks the counts against their targets. In the same regime: the ResNet20
twin with 'diag' and 'full' envelopes against 'spherical' ones, and stacks of ten adaptive layers against ten
plain convolutions in 1-D, 2-D and 3-D.
"""

import copy
import functools
import json
from typing import Callable, Dict, List, Sequence, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import timm_aconv
from benchmarks import report
from benchmarks.guards import Guard
from benchmarks.steps import TINY_KERNEL_SIZE, TINY_WIDTHS, tiny_resnet, tiny_resnet_pair, train_step_fn
from benchmarks.suites import ops
from benchmarks.timing import Measure

DISPATCH_DEPTHS = (20, 56)
DISPATCH_BATCH, DISPATCH_IMAGE_SIZE = 1, 8
TWIN_STEP = dict(batch=DISPATCH_BATCH, size=DISPATCH_IMAGE_SIZE)  # the batch and image size of the twins' steps
COVARIANCE_DEPTH = 20  # the twin whose 'diag' and 'full' envelopes are timed against its 'spherical' ones
COVARIANCE_TYPES = ('spherical', 'diag', 'full')
# stacks of bare layers in 1-D, 2-D and 3-D: (adaptive, ordinary, input shape), inputs of one number of pixels
STACK_LAYERS, STACK_CHANNELS = 10, 4
STACKS = (
    (timm_aconv.AdaptiveConv1d, nn.Conv1d, (64,)),
    (timm_aconv.AdaptiveConv2d, nn.Conv2d, (8, 8)),
    (timm_aconv.AdaptiveConv3d, nn.Conv3d, (4, 4, 4)),
)
# the targets of the suite's guards (deterministic counts of the tiny twins, see guards()):
# autograd nodes the kernel group adds to a model besides the AccumulateGrad node of each sigma: 12 for the family's
# envelope, a product per stack of same-shape weights and a cat and a split per stack of several layers (22 in both
# depths: stacks of 1, 6, 6 and 6 layers in ResNet20)
GROUP_AUTOGRAD_NODES_TARGET = 22
# kernels inductor generates for one compiled training step, per added adaptive layer: the concatenations' copies of
# sigma, W and dL/dK (layer by layer it was 11)
KERNELS_PER_ADDED_LAYER_TARGET = 3.5


def sigma_floor_step_fn(model: nn.Module, batch: int, size: int, compile_model: bool = False) -> Callable[[], None]:
    """A training step of ``model`` (adaptive) that pays for its sigma parameters only: every layer
    convolves with its plain weight (no envelope, no product kernel), and each sigma gets a gradient
    (zeros, made once) for the optimizer's update and the clamp. What no formulation of the kernels
    can remove while sigma stays one parameter per layer in the user's optimizer. ``compile_model``:
    the forward is ``torch.compile``'d (the optimizer step and the clamp stay outside, as in the
    compiled dispatch case)."""
    model = copy.deepcopy(model)
    layers = list(timm_aconv.adaptive_layers(model))
    for layer in layers:
        layer.forward = functools.partial(lambda layer, x: layer._conv_forward(x, layer.weight, layer.bias), layer)
    zeros = [torch.zeros_like(layer.sigma) for layer in layers]

    def sigma_gradients():
        for layer, zero in zip(layers, zeros):
            layer.sigma.grad = zero

    forward = torch.compile(model) if compile_model else None
    return train_step_fn(model, batch, size, foreach=True, forward=forward, after_backward=sigma_gradients)


def autograd_nodes(model: nn.Module, batch: int, size: int) -> int:
    """Nodes of the autograd graph of one training forward's loss (AccumulateGrad nodes included)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    loss = F.cross_entropy(model.train()(x), torch.zeros(batch, dtype=torch.long))
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def compiled_step_counts(model: nn.Module, batch: int, size: int) -> Dict[str, int]:
    """One compiled training step (forward and backward) of ``model``: the kernels inductor generates
    (``generated_kernels``, ``torch._inductor.metrics``) and how many generated functions the step then
    calls (``kernel_calls``, counted with ``torch.profiler``). On a CPU a generated function runs all the
    loop nests inductor fused into it, so it may hold several generated kernels; each call is what a
    launch is on a GPU."""
    from torch._inductor import config, metrics

    torch._dynamo.reset()
    metrics.reset()
    with config.patch({'cpp.enable_kernel_profile': True}):  # each generated function records its calls
        step = train_step_fn(model, batch, size, foreach=True, forward=torch.compile(model))
        step()  # compiles forward and backward
        kernels = metrics.generated_kernel_count
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            step()
    calls = sum(1 for event in profiler.events() if 'cpp_fused' in event.name)
    return dict(generated_kernels=kernels, kernel_calls=calls)


TimePair = Callable[..., None]  # time_pair(case, adaptive_step, ordinary_step, note=''): one timed row


def dispatch_cases(
    measure: Measure, compile_model: bool = True, depths: Sequence[int] = DISPATCH_DEPTHS
) -> Tuple[List[Dict], List[Dict]]:
    """Train-step ratios and deterministic counts of the tiny twins (:func:`twin_cases` per depth), then the
    covariance types (:func:`covariance_type_cases`) and the 1-D / 2-D / 3-D stacks (:func:`stack_cases`), on one
    thread. Returns the rows and the counts of each depth."""
    rows, count_rows = [], []

    def time_pair(case: str, adaptive_step: Callable, ordinary_step: Callable, note: str = '') -> None:
        comparison = measure(adaptive_step, ordinary_step, memory=False)
        extra = f'{comparison.adaptive_ms - comparison.ordinary_ms:+.3f} ms/step'
        rows.append(report.row('dispatch', case, comparison, f'{note}, {extra}' if note else extra))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for depth in depths:
            count_rows.append(twin_cases(depth, time_pair, compile_model))
        covariance_type_cases(time_pair)
        stack_cases(time_pair)
    finally:
        torch.set_num_threads(threads)
    return rows, count_rows


def _twin_name(depth: int) -> str:
    return (
        f'resnet{depth} widths {TINY_WIDTHS} k={TINY_KERNEL_SIZE} b{DISPATCH_BATCH} '
        f'{DISPATCH_IMAGE_SIZE}x{DISPATCH_IMAGE_SIZE}'
    )


def _compiled(step: Callable[[], None]) -> Callable[[], None]:
    step()  # compiles forward and backward
    return step


def twin_cases(depth: int, time_pair: TimePair, compile_model: bool) -> Dict:
    """The twins of one depth: the rows of the model as registered, ungrouped, the noise floor and the sigma
    floor (and compiled); returns their deterministic counts (autograd nodes, operations, compiled kernels)."""
    adaptive, ordinary = tiny_resnet_pair(depth)
    layers = sum(1 for _ in timm_aconv.adaptive_layers(adaptive))
    name = _twin_name(depth)
    ungrouped = copy.deepcopy(adaptive)
    timm_aconv.ungroup_adaptive_layers(ungrouped)
    cases = [
        ('default (as registered)', adaptive, ordinary),
        ('ungrouped (each layer its own kernel)', ungrouped, ordinary),
        ('noise floor: ordinary vs ordinary', copy.deepcopy(ordinary), ordinary),
    ]
    for label, first, second in cases:
        # foreach SGD: torch's default on a GPU (a for-loop over parameters on the CPU)
        time_pair(
            f'{name} {label}',
            train_step_fn(copy.deepcopy(first), foreach=True, **TWIN_STEP),
            train_step_fn(copy.deepcopy(second), foreach=True, **TWIN_STEP),
            f'{layers} adaptive layers',
        )
    time_pair(
        f'{name} floor: sigma parameters only (optimizer update and clamp)',
        sigma_floor_step_fn(adaptive, **TWIN_STEP),
        train_step_fn(copy.deepcopy(ordinary), foreach=True, **TWIN_STEP),
    )
    nodes = {
        label: autograd_nodes(model, **TWIN_STEP)
        for label, model in (('default', adaptive), ('ungrouped', ungrouped), ('ordinary', ordinary))
    }
    op_counts = ops.op_overhead(copy.deepcopy(adaptive), copy.deepcopy(ordinary), **TWIN_STEP)
    counts = dict(
        case=name,
        layers=layers,
        autograd_nodes=nodes,
        extra_nodes_per_layer={
            label: round((nodes[label] - nodes['ordinary']) / layers, 2) for label in ('default', 'ungrouped')
        },
        extra_ops=op_counts['adaptive_ops'] - op_counts['ordinary_ops'],
    )
    if compile_model:
        compiled_counts = {
            label: compiled_step_counts(copy.deepcopy(model), **TWIN_STEP)
            for label, model in (('default', adaptive), ('ordinary', ordinary))
        }
        kernels = {label: count['generated_kernels'] for label, count in compiled_counts.items()}
        counts.update(
            generated_kernels=kernels,
            extra_kernels_per_layer=round((kernels['default'] - kernels['ordinary']) / layers, 2),
            kernel_calls={label: count['kernel_calls'] for label, count in compiled_counts.items()},
        )
        torch._dynamo.reset()
        twins = [copy.deepcopy(adaptive), copy.deepcopy(ordinary), copy.deepcopy(ordinary)]
        adaptive_step, ordinary_step, floor_twin_step = (
            _compiled(train_step_fn(model, foreach=True, forward=torch.compile(model), **TWIN_STEP)) for model in twins
        )
        time_pair(
            f'{name} torch.compile (inductor)',
            adaptive_step,
            ordinary_step,
            f'generated kernels {kernels["default"]} vs {kernels["ordinary"]}: '
            f'{counts["extra_kernels_per_layer"]:+g} per adaptive layer',
        )
        time_pair(
            f'{name} compiled floor: sigma parameters only (optimizer update and clamp)',
            _compiled(sigma_floor_step_fn(adaptive, compile_model=True, **TWIN_STEP)),
            floor_twin_step,
        )
    print(f'# {json.dumps(counts)}', flush=True)
    return counts


def covariance_type_cases(time_pair: TimePair) -> None:
    """The tiny ResNet20 with 'diag' and with 'full' envelopes against the same model with 'spherical' ones (the
    same train step as the twins' rows; each model built from seed 0)."""
    models = {kind: tiny_resnet('aconv', COVARIANCE_DEPTH, covariance_type=kind) for kind in COVARIANCE_TYPES}
    layers = sum(1 for _ in timm_aconv.adaptive_layers(models['spherical']))
    for kind in ('diag', 'full'):
        time_pair(
            f"{_twin_name(COVARIANCE_DEPTH)} covariance_type='{kind}' vs 'spherical'",
            train_step_fn(models[kind], foreach=True, **TWIN_STEP),
            train_step_fn(copy.deepcopy(models['spherical']), foreach=True, **TWIN_STEP),
            f'{layers} adaptive layers',
        )


def square_loss_step_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A training step of ``model`` on ``x`` with the loss ``mean(model(x)²)``: foreach SGD with momentum on
    :func:`timm_aconv.param_groups` (sigma clamped after the step by the package's automatic clamp)."""
    optimizer = torch.optim.SGD(timm_aconv.param_groups(model), lr=0.01, momentum=0.9, foreach=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()

    return step


def _stack(layer_class: Type[nn.Module]) -> nn.Sequential:
    """:data:`STACK_LAYERS` layers ``layer_class(STACK_CHANNELS, STACK_CHANNELS, TINY_KERNEL_SIZE)`` that keep the
    input's size, built from seed 0."""
    torch.manual_seed(0)
    channels, size = STACK_CHANNELS, TINY_KERNEL_SIZE
    return nn.Sequential(
        *(layer_class(channels, channels, size, padding=size // 2, bias=False) for _ in range(STACK_LAYERS))
    )


def stack_cases(time_pair: TimePair) -> None:
    """Stacks of adaptive layers against the same stacks of plain convolutions in 1-D, 2-D and 3-D, on inputs with
    the same number of pixels: what each kind of layer costs per step where the arithmetic vanishes. Bare layers
    in an ``nn.Sequential``, as a user stacks them: grouped as they are registered, so their kernels are computed
    together, as a registered model's are."""
    for adaptive_class, ordinary_class, input_shape in STACKS:
        x = torch.randn(1, STACK_CHANNELS, *input_shape, generator=torch.Generator().manual_seed(0))
        time_pair(
            f'stack of {STACK_LAYERS} {adaptive_class.__name__} vs nn.{ordinary_class.__name__}, '
            f'{STACK_CHANNELS} channels, k={TINY_KERNEL_SIZE}, input {input_shape}',
            square_loss_step_fn(_stack(adaptive_class), x),
            square_loss_step_fn(_stack(ordinary_class), x),
            'kernels computed together (grouped as registered)',
        )


def format_dispatch_counts(counts: List[Dict]) -> str:
    """The table of the counts of :func:`dispatch_cases`, one line per depth."""
    lines = [
        '| case | adaptive layers | autograd nodes default / ungrouped / ordinary | extra nodes per layer '
        'default / ungrouped | generated kernels adaptive / ordinary | extra kernels per layer '
        '| calls of generated functions adaptive / ordinary |',
        '|' + '---|' * 7,
    ]
    for row in counts:
        nodes, extra = row['autograd_nodes'], row['extra_nodes_per_layer']
        kernels, calls = row.get('generated_kernels'), row.get('kernel_calls')
        lines.append(
            f'| {row["case"]} | {row["layers"]} | {nodes["default"]} / {nodes["ungrouped"]} / {nodes["ordinary"]} | '
            f'**{extra["default"]:g}** / {extra["ungrouped"]:g} | '
            + (
                f'{kernels["default"]} / {kernels["ordinary"]} | **{row["extra_kernels_per_layer"]:g}** | '
                f'{calls["default"]} / {calls["ordinary"]} |'
                if kernels
                else '– | – | – |'
            )
        )
    return '\n'.join(lines)


def guards(counts: List[Dict]) -> List[Guard]:
    """The counts of :func:`dispatch_cases` (one per depth, shallowest first) against their targets.

    Per depth, the autograd nodes of the kernel group besides one AccumulateGrad per sigma
    (:data:`GROUP_AUTOGRAD_NODES_TARGET`). From the shallowest depth to the deepest (two or more depths): the
    extra operations of a training step do not grow (the kernels of all layers are computed together), and,
    compiled, the generated kernels grow by at most :data:`KERNELS_PER_ADDED_LAYER_TARGET` per added layer;
    at the shallowest depth the compiled step calls no more generated functions than its ordinary twin.
    """
    checks = [
        Guard(
            f'autograd nodes of the kernel group besides one AccumulateGrad per sigma, {row["case"]}',
            row['autograd_nodes']['default'] - row['autograd_nodes']['ordinary'] - row['layers'],
            GROUP_AUTOGRAD_NODES_TARGET,
        )
        for row in counts
    ]
    if not counts:
        return checks
    shallow, deep = counts[0], counts[-1]
    added_layers = deep['layers'] - shallow['layers']
    if added_layers > 0:
        checks.append(
            Guard(
                f'extra operations of a training step added by the {added_layers} more adaptive layers of '
                f'{deep["case"]} over {shallow["case"]}',
                deep['extra_ops'] - shallow['extra_ops'],
                0,
            )
        )
    if 'generated_kernels' in shallow:
        if added_layers > 0:
            extra_kernels = [
                row['generated_kernels']['default'] - row['generated_kernels']['ordinary'] for row in (shallow, deep)
            ]
            checks.append(
                Guard(
                    f'inductor-generated kernels of a compiled training step per added adaptive layer, '
                    f'{shallow["case"]} to {deep["case"]}',
                    round((extra_kernels[1] - extra_kernels[0]) / added_layers, 2),
                    KERNELS_PER_ADDED_LAYER_TARGET,
                )
            )
        calls = shallow['kernel_calls']
        checks.append(
            Guard(
                f'extra calls of generated functions per compiled training step, {shallow["case"]}',
                calls['default'] - calls['ordinary'],
                0,
            )
        )
    return checks
