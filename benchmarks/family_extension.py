"""Does computing each family's product kernels in C++ make the host-bound training step cheaper?

An experiment for the dispatch regime of ``overhead.py --suite dispatch`` (tiny-width ResNets, batch 1
at 8x8, one thread: what remains of a step is per-operation host work). The package computes each family's
product kernels in native operations that autograd records (``kernel_group.family_kernels``: ~23 operations
and ~22 autograd nodes per model, its Python runs once per step). ``family_extension.cpp`` holds three
stand-ins, each one ``torch::autograd::Function`` whose forward and backward are C++ (one autograd node
per family, no Python for it):

- ``C++ node``: the same native operations, with the same bits;
- ``fused C++ loops``: the envelope, the products and their backward as plain loops over the filters, one
  allocation per output and no other operation (what a fused GPU kernel would do; equal to rounding);
- ``C++ node computing nothing``: the same inputs and outputs, zeros for every kernel and gradient: what
  one node costs before it computes anything, the floor of any one-node formulation.

This script builds them (``torch.utils.cpp_extension``: a C++ compiler and ninja; 35 s here the first
time, cached after), compares one training step's gradients with the native formulation's, and times,
interleaved on one thread, each family's work alone and the training step against the native formulation
and against the ordinary twin, next to the native step and the floor of one more parameter per layer.

Usage (from the repository root)::

    python benchmarks/family_extension.py                  # ResNet20 and 56, 15 rounds per case
    python benchmarks/family_extension.py --rounds 21 --json benchmarks/results/family_extension_cpu.json  # 148 s
    python benchmarks/family_extension.py --depths 20 --rounds 9
"""

import argparse
import contextlib
import copy
import functools
import json
import os
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import (
    DISPATCH_BATCH,
    DISPATCH_DEPTHS,
    DISPATCH_IMAGE_SIZE,
    sigma_floor_step_fn,
    tiny_resnet_pair,
    train_step_fn,
)
from timing import CLOCKS, compare

import timm_aconv
from timm_aconv.layers import kernel_group
from timm_aconv.layers.envelope import SIGMA_EPS

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'family_extension.cpp')
NATIVE_FAMILY_KERNELS = kernel_group.family_kernels


def build(verbose: bool = False):
    """Compile (or load from torch's extension cache) ``family_extension.cpp``, optimized (-O3)."""
    from torch.utils import cpp_extension

    with contextlib.suppress(ImportError):  # the pip package's ninja, where the venv's bin is not on PATH
        import ninja

        os.environ['PATH'] = f'{ninja.BIN_DIR}{os.pathsep}{os.environ.get("PATH", "")}'
    return cpp_extension.load('timm_aconv_family_extension', [SOURCE], extra_cflags=['-O3'], verbose=verbose)


VARIANTS = ('node', 'fused', 'plumbing')


class ExtensionFamilyKernels:
    """:func:`~timm_aconv.layers.kernel_group.family_kernels` computed by the extension's ``variant``:
    'node', the same native operations as one C++ autograd node (the same bits); 'fused', loops over the
    filters (one node, one allocation per output, equal to rounding); 'plumbing', a node with the same inputs
    and outputs that computes nothing (zero kernels and gradients: the cost of the node alone)."""

    def __init__(self, extension, variant: str = 'node'):
        if variant not in VARIANTS:
            raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')
        self.extension = extension
        self.variant = variant

    def __call__(self, family, weights: Sequence[torch.Tensor], sigmas: Sequence[torch.Tensor]):
        if family.crop is not None or family.dtype == torch.float16:
            raise ValueError(
                'the C++ family handles whole grids in float32 or float64, got a training window '
                f'{family.window} of {family.grid_size} in {family.dtype}'
            )
        if self.variant == 'plumbing':
            kernels = self.extension.plumbing_only([*weights, *sigmas])
        elif self.variant == 'fused':
            kernels = self.extension.fused_family_kernels(
                [*weights, *sigmas], family.sq_distance, family.grid_size, SIGMA_EPS
            )
        else:
            kernels = self.extension.family_kernels(
                [*weights, *sigmas],
                family.sq_distance,
                family.grid_size,
                SIGMA_EPS,
                [end for _, end in family.stacks],
                family.out_channels,
            )
        # the group hooks its invalidation on the node of the second value: here the family's C++ node
        return kernels, kernels[0]


@contextlib.contextmanager
def family_function(function: Callable) -> Iterator[None]:
    """Groups compute their families with ``function`` inside the block."""
    kernel_group.family_kernels = function
    try:
        yield
    finally:
        kernel_group.family_kernels = NATIVE_FAMILY_KERNELS


def with_family_function(step: Callable[[], None], function: Callable) -> Callable[[], None]:
    """``step`` run with its groups' families computed by ``function``."""

    def run() -> None:
        with family_function(function):
            step()

    return run


def step_gradients(model: torch.nn.Module, function: Callable) -> Dict[str, torch.Tensor]:
    """The gradients of one training forward and backward of ``model`` (batch 2, 8x8), families by ``function``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, DISPATCH_IMAGE_SIZE, DISPATCH_IMAGE_SIZE, generator=generator)
    model.train().zero_grad(set_to_none=True)
    with family_function(function):
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    return {name: parameter.grad for name, parameter in model.named_parameters()}


def gradient_differences(model: torch.nn.Module, function: Callable) -> Dict[str, float]:
    """One training step's gradients of ``model`` with ``function`` against the native formulation's: how many
    parameters' gradients differ in any bit (``differing``) and the largest difference relative to the
    largest native gradient of its parameter (``largest_relative``)."""
    native = step_gradients(copy.deepcopy(model), NATIVE_FAMILY_KERNELS)
    other = step_gradients(copy.deepcopy(model), function)
    differing, largest = 0, 0.0
    for name, grad in native.items():
        if not torch.equal(grad, other[name]):
            differing += 1
            largest = max(largest, ((grad - other[name]).abs().max() / grad.abs().max().clamp_min(1e-30)).item())
    return dict(differing=differing, largest_relative=largest)


def family_tensors(model: torch.nn.Module) -> List[Tuple]:
    """``(family, weights, sigmas)`` of each family of ``model``'s group, the tensors in the family's order."""
    group = next(timm_aconv.adaptive_layers(model))._kernel_group
    layers = group.layers
    return [
        (family, [layers[index].weight for index in family.order], [layers[index].sigma for index in family.order])
        for family in group._families
    ]


def family_work_fn(model: torch.nn.Module, function: Callable) -> Callable[[], None]:
    """The families' work of one training step of ``model`` alone: their kernels and the backward from
    gradients of ones to the weights and sigmas (``torch.autograd.grad``: no accumulation into ``.grad``, no
    convolution, no optimizer)."""
    inputs = family_tensors(model)
    grads = [
        [torch.ones_like(kernel) for kernel in NATIVE_FAMILY_KERNELS(family, weights, sigmas)[0]]
        for family, weights, sigmas in inputs
    ]

    def run() -> None:
        for (family, weights, sigmas), family_grads in zip(inputs, grads):
            torch.autograd.grad(function(family, weights, sigmas)[0], [*weights, *sigmas], family_grads)

    return run


def extension_cases(
    measure: Callable, functions: Dict[str, Callable], depths: Sequence[int] = DISPATCH_DEPTHS
) -> List[Dict]:
    """Per depth and family function (named by ``functions``): the family's work alone and the training step
    against the native formulation, the step against the ordinary twin; the native step and the floor of
    one more parameter per layer (``overhead.sigma_floor_step_fn``) against the ordinary twin. One thread."""
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shape = dict(batch=DISPATCH_BATCH, size=DISPATCH_IMAGE_SIZE)

    def time_pair(depth: int, case: str, first: Callable, second: Callable, gradients: Optional[Dict] = None):
        comparison = measure(first, second, memory=False)
        gradients = gradients or dict(differing=0, largest_relative=0.0)
        row = dict(
            depth=depth,
            case=case,
            ratio=round(comparison.ratio, 3),
            ratio_iqr=[round(comparison.ratio_q1, 3), round(comparison.ratio_q3, 3)],
            first_ms=round(comparison.adaptive_ms, 3),
            second_ms=round(comparison.ordinary_ms, 3),
            differing_gradients=gradients['differing'],
            largest_relative_gradient_difference=gradients['largest_relative'],
        )
        print(
            f'| resnet{depth} | {case} | **{row["ratio"]:.3f}** | {row["ratio_iqr"][0]:.3f}–{row["ratio_iqr"][1]:.3f} '
            f'| {row["first_ms"]:.3f} | {row["second_ms"]:.3f} | {gradients["differing"]} '
            f'| {gradients["largest_relative"]:.1e} |',
            flush=True,
        )
        rows.append(row)

    try:
        for depth in depths:
            adaptive, ordinary = tiny_resnet_pair(depth)
            native_step = with_family_function(
                train_step_fn(copy.deepcopy(adaptive), foreach=True, **shape), NATIVE_FAMILY_KERNELS
            )
            ordinary_step = train_step_fn(copy.deepcopy(ordinary), foreach=True, **shape)
            for name, function in functions.items():
                gradients = gradient_differences(adaptive, function)
                time_pair(
                    depth,
                    f'family work alone (kernels and their backward): {name} vs native',
                    family_work_fn(adaptive, function),
                    family_work_fn(adaptive, NATIVE_FAMILY_KERNELS),
                    gradients,
                )
                step = with_family_function(train_step_fn(copy.deepcopy(adaptive), foreach=True, **shape), function)
                time_pair(depth, f'train step: {name} vs native', step, native_step, gradients)
                time_pair(depth, f'train step: {name} vs ordinary', step, ordinary_step, gradients)
            time_pair(depth, 'train step: native vs ordinary', native_step, ordinary_step)
            time_pair(
                depth,
                'train step: floor (sigma parameters only) vs ordinary',
                sigma_floor_step_fn(adaptive, **shape),
                ordinary_step,
            )
    finally:
        torch.set_num_threads(threads)
    return rows


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--depths', type=int, nargs='+', default=list(DISPATCH_DEPTHS), help='default: 20 56')
    parser.add_argument('--rounds', type=int, default=15, help='timed rounds per case (default 15)')
    parser.add_argument(
        '--clock', choices=CLOCKS, default='wall', help="'wall' (default) or 'cpu': CPU time of this process"
    )
    parser.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    extension = build()
    functions = {
        'C++ node': ExtensionFamilyKernels(extension),
        'fused C++ loops': ExtensionFamilyKernels(extension, 'fused'),
        'C++ node computing nothing': ExtensionFamilyKernels(extension, 'plumbing'),
    }
    built_s = time.perf_counter() - start
    command = ' '.join(['python', sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv)))
    print(
        f'# {command}\n# torch {torch.__version__}, one thread, {args.clock} clock, build/load {built_s:.1f} s\n'
        '| model | case | ratio | ratio IQR | first ms | second ms | gradients differing | largest difference |\n'
        '|---|---|---|---|---|---|---|---|',
        flush=True,
    )
    measure = functools.partial(compare, rounds=args.rounds, warmup=5, min_round_s=0.1, clock=args.clock)
    rows = extension_cases(measure, functions, args.depths)
    results = dict(
        command=command,
        torch=torch.__version__,
        clock=args.clock,
        seconds=round(time.perf_counter() - start, 1),
        cases=rows,
    )
    print(f'# {results["seconds"]} s in all; ratio = median over interleaved rounds of first time / second time')
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(results, file, indent=1)
    return results


if __name__ == '__main__':
    main()
