"""How much slower is an adaptive convolution than an ordinary one of the same size?

Prints, for every case, the adaptive time divided by the ordinary ``nn.Conv2d`` time, both
measured interleaved in this process (warm-up, alternating rounds, medians; see
``benchmarks/timing.py``), with the spread of the per-round ratios and the peak memory of one
call. Ratios below 1 mean the adaptive (or its deployed form) is faster.

Suites:
    layer    one conv, n in {3, 5, 7, 9}: training forward (envelope recomputed), forward +
             backward, eval forward (no grad: product kernel cached), on CIFAR ResNet shapes.
    model    aconv_resnet20 vs conv_resnet20 (same k=7), batch 64, 32x32: train step (forward,
             backward, SGD step, sigma clamp) and its noise floor (ordinary vs an identical
             ordinary model), eval forward, fused (fuse_convs), cropped (sigmas set to fit 3x3 /
             5x5, fuse_convs(crop_tol=...)) and torch.compile'd eval forward.
    covariance  the train step of aconv_resnet20 (k=7, batch 32, 32x32) with 'diag' and 'full' envelopes
             against the same model with 'spherical' ones (the paper's), and the noise floor of the
             spherical model against itself.
    scaling  the train-step ratio at image sizes 32/64/128 (batch 8) and batch sizes 8/32/128 (32x32).
    ops      compute operations (kernel launches on a GPU) per training step, counted with
             torch.profiler: aconv_resnet20 vs conv_resnet20, k=7, batch 8, foreach SGD; the extra
             operations per adaptive layer and which they are (deterministic, unlike times), with the
             model's kernels computed together (the default) and layer by layer (ungrouped).
    dispatch the host-bound regime of a GPU step, measured on the CPU: twin ResNets 20 and 56 with tiny
             widths (2, 4, 8), 3x3 grids, batch 1 at 8x8, one thread, so that the arithmetic vanishes
             and what remains is per-step Python, autograd and dispatch work. Train-step ratios
             (model as registered; its layers ungrouped, each computing its own kernel; an ordinary
             twin against itself as the noise floor; both compiled; the floor of one more parameter per layer,
             eager and compiled), autograd nodes per step and, compiled, the kernels inductor generates
             (torch._inductor.metrics) and the calls of generated functions per step (torch.profiler).
    gpu      train steps timed on --device (CUDA events on a GPU): aconv_resnet20 vs conv_resnet20
             (k=7, batch 128, 32x32) and aconv_resnet50 vs timm's resnet50 (batch 32, 224x224), each
             eager (also ungrouped, layer by layer), as one CUDA graph (the whole step captured; GPU
             only) and torch.compile'd, plus the operations and CUDA kernels per step. Every case runs on
             its own: one that fails or runs out of the time budget is reported and the others still run.

Usage (from the repository root)::

    python benchmarks/overhead.py                       # the CPU suites, ~4 minutes on 2 cores
    python benchmarks/overhead.py --suite model --json results.json
    python benchmarks/overhead.py --suite layer --rounds 5 --threads 1
    python benchmarks/overhead.py --threads 1 --clock cpu   # on a machine busy with other work
    python benchmarks/overhead.py --suite ops           # operations per training step, ~10 s
    python benchmarks/overhead.py --suite dispatch      # the host-bound regime, ~3 minutes
    PYTHONPATH=. python benchmarks/overhead.py --device cuda --json gpu.json   # the gpu suite, <= 5 min
"""

import argparse
import collections
import copy
import dataclasses
import functools
import json
import os
import platform
import signal
import sys
import time
from typing import Callable, Counter, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timm
from timing import CLOCKS, Comparison, CudaEventClock, compare, cuda_peak_memory_mib, quiet_stderr
from torch.profiler import ProfilerActivity, profile

import timm_aconv

SUITES = ('layer', 'model', 'covariance', 'scaling', 'ops', 'dispatch', 'gpu')
CPU_SUITES = ('layer', 'model', 'covariance', 'scaling', 'ops')
LAYER_SHAPES = [  # (batch, channels, image size): the three stages of a CIFAR ResNet20 at batch 64
    (64, 16, 32),
    (64, 32, 16),
    (64, 64, 8),
]
LAYER_SIZES = (3, 5, 7, 9)
MODEL_KERNEL_SIZE = 7
Measure = Callable[..., Comparison]  # compare() with the run's rounds and clock bound
# sigma that keeps all but ~1e-4 of the envelope energy in a centred 3x3 / 5x5 window of the 7x7
# grid (0.1 is the paper's smallest initial sigma; the default clamp (1/7, 7) would need
# sigma_bounds=(0.1, 7)), and the energy tolerance of the crop
CROP_SIGMA = {3: 0.1, 5: 0.15}
CROP_TOL = 1e-3
# sigma whose training window at train_crop_tol=CROP_TOL is 3x3 / 5x5 (the window holds the envelope's energy
# and its derivative's in sigma, so these are smaller than CROP_SIGMA), and the batch of those cases
TRAIN_CROP_SIGMA = {3: 0.075, 5: 0.11}
TRAIN_CROP_BATCH = 32


def _zero_grads(module: nn.Module) -> None:
    for param in module.parameters():
        param.grad = None


# ----------------------------------------------------------------------------------- layer
def _layer_pair(channels: int, n: int) -> Tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ordinary = nn.Conv2d(channels, channels, n, padding=n // 2, bias=False)
    adaptive = timm_aconv.convert_conv(copy.deepcopy(ordinary), n, preserve=False)
    return adaptive, ordinary


def layer_cases(measure: Measure) -> List[Dict]:
    results = []
    for batch, channels, size in LAYER_SHAPES:
        x = torch.randn(batch, channels, size, size)
        x_grad = x.clone().requires_grad_(True)
        for n in LAYER_SIZES:
            adaptive, ordinary = _layer_pair(channels, n)
            grad_out = torch.randn(batch, channels, size, size)

            def train_forward(conv, x_grad=x_grad):
                return lambda: conv(x_grad)

            def forward_backward(conv, x_grad=x_grad, grad_out=grad_out):
                def step():
                    _zero_grads(conv)
                    x_grad.grad = None
                    conv(x_grad).backward(grad_out)

                return step

            def eval_forward(conv, x=x):
                def step():
                    with torch.no_grad():
                        return conv(x)

                return step

            for mode, make in (('train fwd', train_forward), ('fwd+bwd', forward_backward), ('eval fwd', eval_forward)):
                comparison = measure(make(adaptive), make(ordinary))
                results.append(_row('layer', f'{batch}x{channels}x{size}x{size} n={n} {mode}', comparison))
    return results


# ----------------------------------------------------------------------------------- model
def resnet20_pair(kernel_size: int = MODEL_KERNEL_SIZE) -> Tuple[nn.Module, nn.Module]:
    """``aconv_resnet20`` and ``conv_resnet20`` with the same kernel size (and seed)."""
    torch.manual_seed(0)
    adaptive = timm.create_model('aconv_resnet20', kernel_size=kernel_size)
    torch.manual_seed(0)
    ordinary = timm.create_model('conv_resnet20', kernel_size=kernel_size)
    return adaptive, ordinary


def train_step_fn(
    model: nn.Module,
    batch: int,
    size: int,
    device: str = 'cpu',
    foreach: Optional[bool] = None,
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    after_backward: Callable[[], None] = lambda: None,
) -> Callable[[], None]:
    """One full training step as the recipes do it: forward, backward, SGD step, sigma clamp.

    ``foreach``: SGD's multi-tensor implementation (torch's default: on CUDA only); ``forward``:
    what computes the outputs (e.g. the compiled model), default ``model``; ``after_backward``: called
    between the backward and the optimizer step.
    """
    model.train()
    optimizer = torch.optim.SGD(
        timm_aconv.param_groups(model, weight_decay=1e-4), lr=0.01, momentum=0.9, foreach=foreach
    )
    timm_aconv.register_sigma_clamp(optimizer, model)  # a no-op hook for a model without adaptive layers
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    target = torch.randint(0, getattr(model, 'num_classes', 10), (batch,), generator=generator).to(device)
    forward = model if forward is None else forward

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), target).backward()
        after_backward()
        optimizer.step()

    return step


def eval_forward_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    model.eval()

    def forward():
        with torch.no_grad():
            return model(x)

    return forward


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm())


def _cropped(adaptive: nn.Module, window: int) -> Tuple[nn.Module, nn.Module, List[int]]:
    """A copy of ``adaptive`` with every sigma set to fit ``window``, and its cropped fused form."""
    sigma = CROP_SIGMA[window]
    shrunk = copy.deepcopy(adaptive).eval()
    with torch.no_grad():
        for layer in timm_aconv.adaptive_layers(shrunk):
            layer.sigma.fill_(sigma)
    cropped = timm_aconv.fuse_convs(copy.deepcopy(shrunk), crop_tol=CROP_TOL)
    sizes = sorted({m.kernel_size[0] for m in cropped.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1})
    return shrunk, cropped, sizes


def _graph_breaks(model: nn.Module, x: torch.Tensor) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x).graph_break_count


def model_cases(measure: Measure, compile_model: bool) -> List[Dict]:
    results = []
    adaptive, ordinary = resnet20_pair()
    layers = sum(1 for _ in timm_aconv.adaptive_layers(adaptive))
    note = f'{layers} adaptive layers, k={MODEL_KERNEL_SIZE}'
    # training copies: the eval cases below then see the same untrained models whatever the rounds
    comparison = measure(train_step_fn(copy.deepcopy(adaptive), 64, 32), train_step_fn(copy.deepcopy(ordinary), 64, 32))
    results.append(_row('model', 'train step b64 32x32 unfused', comparison, note))
    # the same measurement of two identical ordinary models: how far from 1 noise alone moves a ratio
    comparison = measure(
        train_step_fn(copy.deepcopy(ordinary), 64, 32), train_step_fn(copy.deepcopy(ordinary), 64, 32), memory=False
    )
    results.append(_row('model', 'noise floor: ordinary vs ordinary train step', comparison))

    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    comparison = measure(eval_forward_fn(adaptive, x), eval_forward_fn(ordinary, x))
    results.append(_row('model', 'eval fwd b64 unfused', comparison))

    fused = timm_aconv.fuse_convs(copy.deepcopy(adaptive))
    error = _relative_error(eval_forward_fn(fused, x)(), eval_forward_fn(adaptive, x)())
    comparison = measure(eval_forward_fn(fused, x), eval_forward_fn(ordinary, x))
    results.append(_row('model', 'eval fwd b64 fused', comparison, f'rel. error vs unfused {error:.1e}'))

    for window in CROP_SIGMA:
        shrunk, cropped, sizes = _cropped(adaptive, window)
        error = _relative_error(eval_forward_fn(cropped, x)(), eval_forward_fn(shrunk, x)())
        comparison = measure(eval_forward_fn(cropped, x), eval_forward_fn(ordinary, x))
        results.append(
            _row(
                'model',
                f'eval fwd b64 cropped to {window}x{window}',
                comparison,
                f'sigma={CROP_SIGMA[window]}, crop_tol={CROP_TOL}, kernels {sizes}, '
                f'rel. error vs unfused {error:.1e}, speed-up {1 / comparison.ratio:.2f}x',
            )
        )

    results += train_crop_cases(measure)

    if compile_model:
        breaks = {mode: _graph_breaks(adaptive.train(mode == 'train'), x) for mode in ('train', 'eval')}
        torch._dynamo.reset()
        start = time.perf_counter()
        compiled_adaptive, compiled_ordinary = torch.compile(adaptive), torch.compile(ordinary)
        adaptive_forward, ordinary_forward = (
            eval_forward_fn(compiled_adaptive, x),
            eval_forward_fn(compiled_ordinary, x),
        )
        adaptive_forward(), ordinary_forward()
        compile_s = time.perf_counter() - start
        comparison = measure(adaptive_forward, ordinary_forward, memory=False)  # the profiler misses compiled code
        results.append(
            _row(
                'model',
                'eval fwd b64 torch.compile',
                comparison,
                f'graph breaks train/eval {breaks["train"]}/{breaks["eval"]}, compile {compile_s:.0f}s (both)',
            )
        )
    return results


def train_crop_model(window: int) -> nn.Module:
    """``aconv_resnet20`` k=7 training at ``window``x``window``: ``train_crop_tol=CROP_TOL`` with every sigma at
    ``TRAIN_CROP_SIGMA[window]``, held by the clamp in [0.99 sigma, sigma] so that the window stays while timed
    (sigma still gets its gradient, its update and the clamp every step)."""
    sigma = TRAIN_CROP_SIGMA[window]
    torch.manual_seed(0)
    model = timm.create_model(
        'aconv_resnet20', kernel_size=MODEL_KERNEL_SIZE, sigma_init=sigma, sigma_bounds=(0.99 * sigma, sigma)
    )
    return timm_aconv.set_train_crop(model, CROP_TOL)


def train_crop_cases(measure: Measure) -> List[Dict]:
    """Training at the learned size: the train step of :func:`train_crop_model` against ``conv_resnet20``
    at k=7 and at the window's size, and those two ordinary models against each other, interleaved."""
    results = []
    batch = TRAIN_CROP_BATCH
    ordinary = {}
    for size in (MODEL_KERNEL_SIZE, *TRAIN_CROP_SIGMA):
        torch.manual_seed(0)
        ordinary[size] = train_step_fn(timm.create_model('conv_resnet20', kernel_size=size), batch, 32)
    for window, sigma in TRAIN_CROP_SIGMA.items():
        model = train_crop_model(window)
        cropped = train_step_fn(model, batch, 32)
        for size in (MODEL_KERNEL_SIZE, window):
            comparison = measure(cropped, ordinary[size], memory=False)
            windows = sorted({'x'.join(map(str, box)) for box in timm_aconv.crop_windows(model).values()})
            overruns = sum(layer.train_crop_overruns for layer in timm_aconv.adaptive_layers(model))
            results.append(
                _row(
                    'model',
                    f'train step b{batch} 32x32 at train_crop_tol={CROP_TOL:g} vs conv_resnet20 k={size}',
                    comparison,
                    f'aconv_resnet20 k={MODEL_KERNEL_SIZE}, sigma={sigma}, training windows {windows}, '
                    f'overruns {overruns}',
                )
            )
        comparison = measure(ordinary[window], ordinary[MODEL_KERNEL_SIZE], memory=False)
        results.append(
            _row(
                'model',
                f'reference: conv_resnet20 k={window} vs k={MODEL_KERNEL_SIZE} train step b{batch} 32x32',
                comparison,
            )
        )
    return results


# --------------------------------------------------------------------------------- covariance
def covariance_cases(measure: Measure) -> List[Dict]:
    """Elliptic envelopes: the train step of ``aconv_resnet20`` with each ``covariance_type`` against the
    spherical model (each model a fresh copy of one seed), interleaved; the spherical model against
    itself as the noise floor."""
    steps = {}
    for covariance_type in ('spherical', 'diag', 'full'):
        torch.manual_seed(0)
        model = timm.create_model('aconv_resnet20', kernel_size=MODEL_KERNEL_SIZE, covariance_type=covariance_type)
        steps[covariance_type] = train_step_fn(model, TRAIN_CROP_BATCH, 32)
    torch.manual_seed(0)
    twin = timm.create_model('aconv_resnet20', kernel_size=MODEL_KERNEL_SIZE)
    results = []
    for covariance_type, reference in (('diag', 'spherical'), ('full', 'spherical')):
        comparison = measure(steps[covariance_type], steps[reference], memory=False)
        case = f"train step b{TRAIN_CROP_BATCH} 32x32 covariance_type='{covariance_type}' vs 'spherical'"
        results.append(_row('covariance', case, comparison, f'aconv_resnet20 k={MODEL_KERNEL_SIZE}'))
    comparison = measure(train_step_fn(twin, TRAIN_CROP_BATCH, 32), steps['spherical'], memory=False)
    results.append(_row('covariance', "noise floor: 'spherical' vs 'spherical' train step", comparison))
    return results


# --------------------------------------------------------------------------------- scaling
def scaling_cases(measure: Measure) -> List[Dict]:
    results = []
    adaptive, ordinary = resnet20_pair()
    # image size at batch 8, then batch size at 32x32 (batch 64 is the model suite's train step)
    for batch, size in ((8, 32), (8, 64), (8, 128), (32, 32), (128, 32)):
        comparison = measure(
            train_step_fn(adaptive, batch, size), train_step_fn(ordinary, batch, size), warmup=1, memory=False
        )
        results.append(
            _row(
                'scaling',
                f'train step b{batch} {size}x{size}',
                comparison,
                f'overhead {comparison.adaptive_ms - comparison.ordinary_ms:+.1f} ms/step',
            )
        )
    return results


# ------------------------------------------------------------------------------------- ops
OPS_PER_LAYER_TARGET = 3  # extra compute operations per adaptive layer per training step, kernels computed together
# the same with every layer computing its own kernel (a layer in no group): the formula (with the grid's squared
# distances from its offsets) and autograd's backward
OPS_PER_LAYER_UNGROUPED = 30
OPS_KERNEL_SIZE, OPS_BATCH, OPS_IMAGE_SIZE = 7, 8, 32
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
        adaptive_ops=total_adaptive,
        ordinary_ops=total_ordinary,
        extra_ops_per_layer=round((total_adaptive - total_ordinary) / max(layers, 1), 2),
        adaptive_cuda_kernels=adaptive_kernels if cuda else None,
        ordinary_cuda_kernels=ordinary_kernels if cuda else None,
        difference=difference,
    )


def _op_row(case: str, counts: Dict) -> Dict:
    row = dict(case=case, **counts)
    print(_format_op_row(row), flush=True)
    return row


def ops_cases() -> List[Dict]:
    rows = []
    for grouped in (True, False):
        adaptive, ordinary = resnet20_pair(OPS_KERNEL_SIZE)
        counts = op_overhead(adaptive, ordinary, OPS_BATCH, OPS_IMAGE_SIZE, grouped=grouped)
        rows.append(
            _op_row(
                f'aconv_resnet20 vs conv_resnet20 k={OPS_KERNEL_SIZE} b{OPS_BATCH} '
                f'{OPS_IMAGE_SIZE}x{OPS_IMAGE_SIZE}{"" if grouped else UNGROUPED_SUFFIX}',
                counts,
            )
        )
    return rows


# -------------------------------------------------------------------------------- dispatch
DISPATCH_DEPTHS = (20, 56)
DISPATCH_WIDTHS = (2, 4, 8)
DISPATCH_KERNEL_SIZE, DISPATCH_BATCH, DISPATCH_IMAGE_SIZE = 3, 1, 8


def tiny_resnet_pair(depth: int) -> Tuple[nn.Module, nn.Module]:
    """``aconv_resnet<depth>`` and ``conv_resnet<depth>`` with the dispatch suite's tiny widths."""
    kwargs = dict(kernel_size=DISPATCH_KERNEL_SIZE, widths=DISPATCH_WIDTHS)
    torch.manual_seed(0)
    adaptive = timm.create_model(f'aconv_resnet{depth}', **kwargs)
    torch.manual_seed(0)
    ordinary = timm.create_model(f'conv_resnet{depth}', **kwargs)
    return adaptive, ordinary


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


def dispatch_cases(
    measure: Measure, compile_model: bool = True, depths: Sequence[int] = DISPATCH_DEPTHS
) -> Tuple[List[Dict], List[Dict]]:
    """Train-step ratios and deterministic counts of the tiny twins, on one thread."""
    rows, count_rows = [], []

    def time_pair(case: str, adaptive_step: Callable, ordinary_step: Callable, note: str = '') -> None:
        comparison = measure(adaptive_step, ordinary_step, memory=False)
        extra = f'{comparison.adaptive_ms - comparison.ordinary_ms:+.3f} ms/step'
        rows.append(_row('dispatch', case, comparison, f'{note}, {extra}' if note else extra))

    def compiled(step: Callable[[], None]) -> Callable[[], None]:
        step()  # compiles forward and backward
        return step

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shape = dict(batch=DISPATCH_BATCH, size=DISPATCH_IMAGE_SIZE)
    try:
        for depth in depths:
            adaptive, ordinary = tiny_resnet_pair(depth)
            layers = sum(1 for _ in timm_aconv.adaptive_layers(adaptive))
            name = (
                f'resnet{depth} widths {DISPATCH_WIDTHS} k={DISPATCH_KERNEL_SIZE} b{DISPATCH_BATCH} '
                f'{DISPATCH_IMAGE_SIZE}x{DISPATCH_IMAGE_SIZE}'
            )
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
                    train_step_fn(copy.deepcopy(first), foreach=True, **shape),
                    train_step_fn(copy.deepcopy(second), foreach=True, **shape),
                    f'{layers} adaptive layers',
                )
            time_pair(
                f'{name} floor: sigma parameters only (optimizer update and clamp)',
                sigma_floor_step_fn(adaptive, **shape),
                train_step_fn(copy.deepcopy(ordinary), foreach=True, **shape),
            )
            nodes = {
                label: autograd_nodes(model, **shape)
                for label, model in (('default', adaptive), ('ungrouped', ungrouped), ('ordinary', ordinary))
            }
            counts = dict(
                case=name,
                layers=layers,
                autograd_nodes=nodes,
                extra_nodes_per_layer={
                    label: round((nodes[label] - nodes['ordinary']) / layers, 2) for label in ('default', 'ungrouped')
                },
            )
            if compile_model:
                compiled_counts = {
                    label: compiled_step_counts(copy.deepcopy(model), **shape)
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
                    compiled(train_step_fn(model, foreach=True, forward=torch.compile(model), **shape))
                    for model in twins
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
                    compiled(sigma_floor_step_fn(adaptive, compile_model=True, **shape)),
                    floor_twin_step,
                )
            print(f'# {json.dumps(counts)}', flush=True)
            count_rows.append(counts)
    finally:
        torch.set_num_threads(threads)
    return rows, count_rows


# ------------------------------------------------------------------------------------- gpu
@dataclasses.dataclass
class GpuPair:
    """Two models compared on the device: created with ``timm.create_model(name, **kwargs)``."""

    name: str
    adaptive: Tuple[str, Dict]
    ordinary: Tuple[str, Dict]
    batch: int
    size: int


GPU_PAIRS = [
    GpuPair('resnet20', ('aconv_resnet20', dict(kernel_size=7)), ('conv_resnet20', dict(kernel_size=7)), 128, 32),
    GpuPair('resnet50', ('aconv_resnet50', {}), ('resnet50', {}), 32, 224),
]
GPU_MODES = ('eager', 'eager ungrouped', 'cuda graph', 'compiled')
UNGROUPED_SUFFIX = ', ungrouped'
MIN_CASE_S = 20  # a case starts only with this much of the time budget left


class CaseTimeout(BaseException):
    """A case ran out of time (a BaseException, so that no ``except Exception`` on the way swallows it)."""


def _raise_timeout(_signum, _frame):
    raise CaseTimeout()


def _build(pair_model: Tuple[str, Dict], device: str) -> nn.Module:
    torch.manual_seed(0)
    name, kwargs = pair_model
    return timm.create_model(name, **kwargs).to(device)


def cuda_graph_step(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` (a whole training step) captured as one CUDA graph; returns its replay.

    Warm-up on a side stream first (optimizer state, cuDNN algorithm choice), as the CUDA graphs
    section of the PyTorch docs does for whole-network capture.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph.replay


def _gpu_case(pair: GpuPair, mode: str, device: str, measure: Measure, compile_backend: str) -> Tuple[Comparison, str]:
    cuda = torch.device(device).type == 'cuda'
    adaptive, ordinary = _build(pair.adaptive, device), _build(pair.ordinary, device)
    note = ''
    if mode in ('eager', 'eager ungrouped'):
        if mode == 'eager ungrouped':
            timm_aconv.ungroup_adaptive_layers(adaptive)
        steps = [train_step_fn(model, pair.batch, pair.size, device=device) for model in (adaptive, ordinary)]
    elif mode == 'cuda graph':
        if not cuda:
            raise RuntimeError('CUDA graphs need a CUDA device')
        steps = [
            cuda_graph_step(train_step_fn(model, pair.batch, pair.size, device=device))
            for model in (adaptive, ordinary)
        ]
    elif mode == 'compiled':
        start = time.perf_counter()
        steps = []
        for model in (adaptive, ordinary):
            step = train_step_fn(
                model, pair.batch, pair.size, device=device, forward=torch.compile(model, backend=compile_backend)
            )
            step()  # compiles forward and backward
            steps.append(step)
        note = f'torch.compile({compile_backend}) warm-up {time.perf_counter() - start:.0f} s (both)'
    else:
        raise ValueError(f'mode must be one of {GPU_MODES}, got {mode!r}')
    comparison = measure(*steps, memory=False)
    if cuda:
        comparison = dataclasses.replace(
            comparison,
            adaptive_peak_mib=cuda_peak_memory_mib(steps[0]),
            ordinary_peak_mib=cuda_peak_memory_mib(steps[1]),
        )
    return comparison, note


def gpu_cases(
    device: str,
    measure: Measure,
    compile_backend: str = 'inductor',
    time_budget_s: float = 270.0,
    on_result: Callable[[], None] = lambda: None,
    pairs: Optional[Sequence[str]] = None,
    modes: Optional[Sequence[str]] = None,
) -> Tuple[List[Dict], List[Dict], List[Dict]]:
    """Train-step timings of :data:`GPU_PAIRS` on ``device`` in every mode of :data:`GPU_MODES`.

    Every case (op counts of a pair, or a pair in one mode) runs on its own: an exception or the
    time budget ends that case only, and it is listed among the failures. Eager and CUDA-graph
    cases of all pairs run before the compiled ones (compiling takes longest). ``on_result`` is
    called after every case (e.g. to save the results so far).

    Returns:
        (timing rows, op-count rows, failures).
    """
    rows, op_rows, failures = [], [], []
    deadline = time.monotonic() + time_budget_s
    cuda = torch.device(device).type == 'cuda'
    use_alarm = hasattr(signal, 'SIGALRM')
    chosen_pairs = [pair for pair in GPU_PAIRS if pairs is None or pair.name in pairs]
    chosen_modes = ('ops', *GPU_MODES) if modes is None else tuple(modes)
    tasks = [(pair, ops) for pair in chosen_pairs for ops in ('ops', 'ops ungrouped') if 'ops' in chosen_modes]
    # eager first, compiled next, CUDA graphs last: a failed capture can leave the CUDA context unusable
    tasks += [
        (pair, mode)
        for mode in ('eager', 'eager ungrouped', 'compiled', 'cuda graph')
        if mode in chosen_modes
        for pair in chosen_pairs
    ]
    for pair, mode in tasks:
        case = f'{pair.adaptive[0]} vs {pair.ordinary[0]} b{pair.batch} {pair.size}x{pair.size} {mode}'
        left = deadline - time.monotonic()
        if mode == 'cuda graph' and not cuda:
            failures.append(dict(case=case, error='skipped: CUDA graphs need a CUDA device'))
            continue
        if left < MIN_CASE_S:
            failures.append(dict(case=case, error=f'skipped: time budget of {time_budget_s:.0f} s used up'))
            print(f'# {case}: {failures[-1]["error"]}', flush=True)
            continue
        previous = signal.signal(signal.SIGALRM, _raise_timeout) if use_alarm else None
        if use_alarm:
            signal.alarm(max(1, int(left)))
        try:
            if mode.startswith('ops'):
                grouped = mode == 'ops'
                op_rows.append(
                    _op_row(
                        case.replace(f' {mode}', '' if grouped else UNGROUPED_SUFFIX),
                        op_overhead(
                            _build(pair.adaptive, device),
                            _build(pair.ordinary, device),
                            pair.batch,
                            pair.size,
                            device,
                            grouped=grouped,
                        ),
                    )
                )
            else:
                comparison, note = _gpu_case(pair, mode, device, measure, compile_backend)
                rows.append(_row('gpu', case, comparison, note))
        except (Exception, CaseTimeout) as error:
            message = 'time budget used up' if isinstance(error, CaseTimeout) else f'{type(error).__name__}: {error}'
            failures.append(dict(case=case, error=message[:500]))
            print(f'# {case}: FAILED {message[:500]}', flush=True)
        finally:
            if use_alarm:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
            if cuda:
                try:
                    torch.cuda.empty_cache()
                except RuntimeError as error:  # a sticky CUDA error: no later case can run in this process
                    failures.append(dict(case='remaining cases', error=f'CUDA context unusable: {error}'[:500]))
                    on_result()
                    break
        on_result()
    return rows, op_rows, failures


# ---------------------------------------------------------------------------------- output
def _row(suite: str, case: str, comparison: Comparison, note: str = '') -> Dict:
    row = dict(suite=suite, case=case, **comparison.as_dict(), note=note)
    print(_format_row(row), flush=True)
    return row


HEADER = ('suite', 'case', 'adaptive ms', 'ordinary ms', 'ratio', 'ratio IQR', 'peak MiB a/o', 'note')


def _format_row(row: Dict) -> str:
    peak = '–' if row['adaptive_peak_mib'] is None else f'{row["adaptive_peak_mib"]:.1f}/{row["ordinary_peak_mib"]:.1f}'
    return (
        f'| {row["suite"]} | {row["case"]} | {row["adaptive_ms"]:.2f} | {row["ordinary_ms"]:.2f} | '
        f'**{row["ratio"]:.3f}** | {row["ratio_q1"]:.3f}–{row["ratio_q3"]:.3f} | {peak} | {row["note"]} |'
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


def _format_op_row(row: Dict) -> str:
    kernels = (
        '–'
        if row['adaptive_cuda_kernels'] is None
        else f'{row["adaptive_cuda_kernels"]}/{row["ordinary_cuda_kernels"]}'
    )
    layers = row['layers'] or 1
    # counts split into what every layer adds and the rest (operations once per model)
    each = [
        f'{name.replace("aten::", "")} {count // layers}'
        for name, count in row['difference'].items()
        if count // layers
    ]
    shared = [
        f'{name.replace("aten::", "")} {count % layers}' for name, count in row['difference'].items() if count % layers
    ]
    per_layer = ', '.join(each) + (f'; per model: {", ".join(shared)}' if shared else '')
    return (
        f'| {row["case"]} | {row["adaptive_ops"]} | {row["ordinary_ops"]} | {row["layers"]} | '
        f'**{row["extra_ops_per_layer"]:g}** | {kernels} | {per_layer} |'
    )


def format_op_table(rows: List[Dict]) -> str:
    lines = ['| ' + ' | '.join(OP_HEADER) + ' |', '|' + '---|' * len(OP_HEADER)]
    return '\n'.join(lines + [_format_op_row(row) for row in rows])


def format_dispatch_counts(counts: List[Dict]) -> str:
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


def format_table(rows: List[Dict]) -> str:
    lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
    return '\n'.join(lines + [_format_row(row) for row in rows])


def machine_info(device: str = 'cpu') -> Dict:
    info = dict(
        torch=torch.__version__,
        timm=timm.__version__,
        timm_aconv=timm_aconv.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        threads=torch.get_num_threads(),
    )
    if torch.device(device).type == 'cuda':
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32_conv=torch.backends.cudnn.allow_tf32,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def _resolve_device(parser: argparse.ArgumentParser, name: str) -> str:
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        parser.error(f"--device must be 'cpu' or 'cuda' (or 'cuda:N'), got {name!r}")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(
            f'error: --device {name}: no CUDA GPU is present (torch.cuda.is_available() is False, '
            f'torch {torch.__version__}); GPU times can only be measured on a machine with one'
        )
    return str(device)


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--suite',
        nargs='+',
        choices=(*SUITES, 'all'),
        default=None,
        help=f'default: {" ".join(CPU_SUITES)} with --device cpu, gpu with --device cuda',
    )
    parser.add_argument(
        '--device',
        default='cpu',
        help="device of the gpu suite: 'cpu' (default) or 'cuda'; the other suites run on the CPU",
    )
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds per layer/scaling case (default 7)')
    parser.add_argument(
        '--model-rounds',
        type=int,
        default=21,
        help='timed rounds per model case (default 21: the targets are a few percent, and 7 rounds '
        'of two identical models already scatter by ±10%% on 2 shared cores)',
    )
    parser.add_argument('--gpu-rounds', type=int, default=7, help='timed rounds per gpu case (default 7)')
    parser.add_argument(
        '--dispatch-rounds',
        type=int,
        default=15,
        help='timed rounds per dispatch case (default 15; the suite always runs on one thread)',
    )
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    parser.add_argument(
        '--clock',
        choices=CLOCKS,
        default='wall',
        help="'wall' (default) or 'cpu': CPU time of this process, for a busy machine (use --threads 1); "
        'the gpu suite on a CUDA device always times with CUDA events',
    )
    parser.add_argument(
        '--no-compile', action='store_true', help='skip the torch.compile cases of the model and dispatch suites'
    )
    parser.add_argument('--compile-backend', default='inductor', help='torch.compile backend of the gpu suite')
    parser.add_argument(
        '--time-budget',
        type=float,
        default=270.0,
        help='seconds the gpu suite may take, compile warm-ups included; the cases left when it is '
        'used up are reported as skipped (default 270)',
    )
    parser.add_argument(
        '--gpu-pairs',
        nargs='+',
        choices=[pair.name for pair in GPU_PAIRS],
        default=None,
        help='model pairs of the gpu suite (default: all)',
    )
    parser.add_argument(
        '--gpu-modes',
        nargs='+',
        choices=('ops', *GPU_MODES),
        default=None,
        help="cases of the gpu suite: 'ops' (operation counts) and timing modes (default: all)",
    )
    parser.add_argument('--json', default=None, help='also write the results to this JSON file (after every gpu case)')
    args = parser.parse_args(argv)
    device = _resolve_device(parser, args.device)
    cuda = torch.device(device).type == 'cuda'
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite is None:
        suites = ('gpu',) if cuda else CPU_SUITES
    else:
        suites = SUITES if 'all' in args.suite else tuple(args.suite)
    if cuda:
        torch.cuda.set_device(torch.device(device).index or 0)
        torch.backends.cudnn.benchmark = True  # as timm's train.py; warm-up calls pick the algorithms
    command = ' '.join(['python', sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv)))
    info = dict(machine_info(device), clock='cuda events' if cuda and 'gpu' in suites else args.clock, device=device)
    print(f'# {command}\n# {info}\n' + '| ' + ' | '.join(HEADER) + ' |', flush=True)
    start = time.perf_counter()
    rows: List[Dict] = []
    op_rows: List[Dict] = []
    failures: List[Dict] = []
    results = dict(command=command, machine=info, cases=rows, op_counts=op_rows, failures=failures)

    def save() -> None:
        if args.json:
            with open(args.json, 'w') as file:
                json.dump(results, file, indent=1)

    measure = functools.partial(compare, rounds=args.rounds, clock=args.clock)
    if 'layer' in suites:
        rows += layer_cases(measure)
    if 'model' in suites:
        rows += model_cases(functools.partial(measure, rounds=args.model_rounds), compile_model=not args.no_compile)
    if 'covariance' in suites:
        rows += covariance_cases(functools.partial(measure, rounds=args.model_rounds))
    if 'scaling' in suites:
        rows += scaling_cases(functools.partial(measure, rounds=max(3, args.rounds - 2)))
    if 'ops' in suites:
        print('| ' + ' | '.join(OP_HEADER) + ' |', flush=True)
        op_rows += ops_cases()
    dispatch_counts: List[Dict] = []
    if 'dispatch' in suites:
        dispatch_rows, dispatch_counts = dispatch_cases(
            functools.partial(measure, rounds=args.dispatch_rounds, warmup=5, min_round_s=0.1),
            compile_model=not args.no_compile,
        )
        rows += dispatch_rows
        results['dispatch_counts'] = dispatch_counts
    if 'gpu' in suites:
        gpu_measure = functools.partial(
            compare, rounds=args.gpu_rounds, warmup=3, min_round_s=0.05, clock=CudaEventClock() if cuda else args.clock
        )
        gpu_rows, gpu_op_rows, gpu_failures = gpu_cases(
            device,
            gpu_measure,
            compile_backend=args.compile_backend,
            time_budget_s=args.time_budget,
            on_result=save,
            pairs=args.gpu_pairs,
            modes=args.gpu_modes,
        )
        rows += gpu_rows
        op_rows += gpu_op_rows
        failures += gpu_failures
    info['seconds'] = round(time.perf_counter() - start, 1)
    print(
        f'\nratio = median over interleaved rounds of adaptive time / ordinary time (IQR: its quartiles); '
        f'times are medians; peak = extra memory of one call.\n{len(rows)} timed cases in {info["seconds"]} s\n'
    )
    if rows:
        print(format_table(rows))
    if op_rows:
        print(
            f'\ncompute operations per training step (foreach SGD, sigma clamp; target <= {OPS_PER_LAYER_TARGET} '
            f'extra per adaptive layer, {OPS_PER_LAYER_UNGROUPED} ungrouped)\n' + format_op_table(op_rows)
        )
    if dispatch_counts:
        print('\n' + format_dispatch_counts(dispatch_counts))
    for failure in failures:
        print(f'not measured: {failure["case"]}: {failure["error"]}')
    save()
    return results


if __name__ == '__main__':
    main()
