""" How much slower is an adaptive convolution than an ordinary one of the same size?

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
    scaling  the train-step ratio at image sizes 32/64/128 (batch 8) and batch sizes 8/32/128 (32x32).

Usage (from the repository root)::

    python benchmarks/overhead.py                       # every suite, ~4 minutes on 2 cores
    python benchmarks/overhead.py --suite model --json results.json
    python benchmarks/overhead.py --suite layer --rounds 5 --threads 1
    python benchmarks/overhead.py --threads 1 --clock cpu   # on a machine busy with other work
"""
import argparse
import copy
import functools
import json
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import CLOCKS, Comparison, compare  # noqa: E402

import timm  # noqa: E402
import timm_aconv  # noqa: E402

SUITES = ('layer', 'model', 'scaling')
LAYER_SHAPES = [  # (batch, channels, image size): the three stages of a CIFAR ResNet20 at batch 64
    (64, 16, 32), (64, 32, 16), (64, 64, 8)]
LAYER_SIZES = (3, 5, 7, 9)
MODEL_KERNEL_SIZE = 7
Measure = Callable[..., Comparison]  # compare() with the run's rounds and clock bound
# sigma that keeps all but ~1e-4 of the envelope energy in a centred 3x3 / 5x5 window of the 7x7
# grid (0.1 is the paper's smallest initial sigma; the default clamp (1/7, 7) would need
# sigma_bounds=(0.1, 7)), and the energy tolerance of the crop
CROP_SIGMA = {3: 0.1, 5: 0.15}
CROP_TOL = 1e-3


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

            def train_forward(conv):
                return lambda: conv(x_grad)

            def forward_backward(conv):
                def step():
                    _zero_grads(conv)
                    x_grad.grad = None
                    conv(x_grad).backward(grad_out)
                return step

            def eval_forward(conv):
                def step():
                    with torch.no_grad():
                        return conv(x)
                return step

            for mode, make in (('train fwd', train_forward), ('fwd+bwd', forward_backward),
                               ('eval fwd', eval_forward)):
                comparison = measure(make(adaptive), make(ordinary))
                results.append(_row('layer', f'{batch}x{channels}x{size}x{size} n={n} {mode}', comparison))
    return results


# ----------------------------------------------------------------------------------- model
def resnet20_pair(kernel_size: int = MODEL_KERNEL_SIZE) -> Tuple[nn.Module, nn.Module]:
    """ ``aconv_resnet20`` and ``conv_resnet20`` with the same kernel size (and seed). """
    torch.manual_seed(0)
    adaptive = timm.create_model('aconv_resnet20', kernel_size=kernel_size)
    torch.manual_seed(0)
    ordinary = timm.create_model('conv_resnet20', kernel_size=kernel_size)
    return adaptive, ordinary


def train_step_fn(model: nn.Module, batch: int, size: int) -> Callable[[], None]:
    """ One full training step as the recipes do it: forward, backward, SGD step, sigma clamp. """
    model.train()
    optimizer = torch.optim.SGD(timm_aconv.param_groups(model, weight_decay=1e-4), lr=0.01, momentum=0.9)
    timm_aconv.register_sigma_clamp(optimizer, model)  # a no-op hook for a model without adaptive layers
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    target = torch.randint(0, 10, (batch,), generator=generator)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
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
    """ A copy of ``adaptive`` with every sigma set to fit ``window``, and its cropped fused form. """
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
        train_step_fn(copy.deepcopy(ordinary), 64, 32), train_step_fn(copy.deepcopy(ordinary), 64, 32), memory=False)
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
        results.append(_row(
            'model', f'eval fwd b64 cropped to {window}x{window}', comparison,
            f'sigma={CROP_SIGMA[window]}, crop_tol={CROP_TOL}, kernels {sizes}, '
            f'rel. error vs unfused {error:.1e}, speed-up {1 / comparison.ratio:.2f}x'))

    if compile_model:
        breaks = {mode: _graph_breaks(adaptive.train(mode == 'train'), x) for mode in ('train', 'eval')}
        torch._dynamo.reset()
        start = time.perf_counter()
        compiled_adaptive, compiled_ordinary = torch.compile(adaptive), torch.compile(ordinary)
        adaptive_forward, ordinary_forward = eval_forward_fn(compiled_adaptive, x), eval_forward_fn(compiled_ordinary, x)
        adaptive_forward(), ordinary_forward()
        compile_s = time.perf_counter() - start
        comparison = measure(adaptive_forward, ordinary_forward, memory=False)  # the profiler misses compiled code
        results.append(_row(
            'model', 'eval fwd b64 torch.compile', comparison,
            f"graph breaks train/eval {breaks['train']}/{breaks['eval']}, compile {compile_s:.0f}s (both)"))
    return results


# --------------------------------------------------------------------------------- scaling
def scaling_cases(measure: Measure) -> List[Dict]:
    results = []
    adaptive, ordinary = resnet20_pair()
    # image size at batch 8, then batch size at 32x32 (batch 64 is the model suite's train step)
    for batch, size in ((8, 32), (8, 64), (8, 128), (32, 32), (128, 32)):
        comparison = measure(
            train_step_fn(adaptive, batch, size), train_step_fn(ordinary, batch, size), warmup=1, memory=False)
        results.append(_row('scaling', f'train step b{batch} {size}x{size}', comparison,
                            f'overhead {comparison.adaptive_ms - comparison.ordinary_ms:+.1f} ms/step'))
    return results


# ---------------------------------------------------------------------------------- output
def _row(suite: str, case: str, comparison: Comparison, note: str = '') -> Dict:
    row = dict(suite=suite, case=case, **comparison.as_dict(), note=note)
    print(_format_row(row), flush=True)
    return row


HEADER = ('suite', 'case', 'adaptive ms', 'ordinary ms', 'ratio', 'ratio IQR', 'peak MiB a/o', 'note')


def _format_row(row: Dict) -> str:
    peak = '–' if row['adaptive_peak_mib'] is None else f"{row['adaptive_peak_mib']:.1f}/{row['ordinary_peak_mib']:.1f}"
    return (f"| {row['suite']} | {row['case']} | {row['adaptive_ms']:.2f} | {row['ordinary_ms']:.2f} | "
            f"**{row['ratio']:.3f}** | {row['ratio_q1']:.3f}–{row['ratio_q3']:.3f} | {peak} | {row['note']} |")


def format_table(rows: List[Dict]) -> str:
    lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
    return '\n'.join(lines + [_format_row(row) for row in rows])


def machine_info() -> Dict:
    return dict(
        torch=torch.__version__, timm=timm.__version__, timm_aconv=timm_aconv.__version__,
        python=platform.python_version(), cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(), threads=torch.get_num_threads())


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--suite', nargs='+', choices=SUITES + ('all',), default=['all'])
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds per layer/scaling case (default 7)')
    parser.add_argument('--model-rounds', type=int, default=21,
                        help='timed rounds per model case (default 21: the targets are a few percent, and 7 rounds '
                             'of two identical models already scatter by ±10%% on 2 shared cores)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    parser.add_argument('--clock', choices=CLOCKS, default='wall',
                        help="'wall' (default) or 'cpu': CPU time of this process, for a busy machine (use --threads 1)")
    parser.add_argument('--no-compile', action='store_true', help='skip the torch.compile case')
    parser.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = SUITES if 'all' in args.suite else tuple(args.suite)
    info = dict(machine_info(), clock=args.clock)
    print(f"# {' '.join(['python'] + sys.argv)}\n# {info}\n" + '| ' + ' | '.join(HEADER) + ' |', flush=True)
    start = time.perf_counter()
    rows = []
    measure = functools.partial(compare, rounds=args.rounds, clock=args.clock)
    if 'layer' in suites:
        rows += layer_cases(measure)
    if 'model' in suites:
        rows += model_cases(functools.partial(measure, rounds=args.model_rounds), compile_model=not args.no_compile)
    if 'scaling' in suites:
        rows += scaling_cases(functools.partial(measure, rounds=max(3, args.rounds - 2)))
    info['seconds'] = round(time.perf_counter() - start, 1)
    print(f"\nratio = median over interleaved rounds of adaptive time / ordinary time (IQR: its quartiles); "
          f"times are medians; peak = extra memory of one call.\n{len(rows)} cases in {info['seconds']} s\n")
    print(format_table(rows))
    results = dict(command=' '.join(['python'] + sys.argv), machine=info, cases=rows)
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(results, file, indent=1)
    return results


if __name__ == '__main__':
    main()
