"""How much slower is an adaptive convolution than an ordinary one of the same size?

Prints, for every case, the adaptive time divided by the ordinary ``nn.Conv2d`` time, both
measured interleaved in this process (warm-up, alternating rounds, medians; see
``benchmarks/timing.py``), with the spread of the per-round ratios and the peak memory of one
call. Ratios below 1 mean the adaptive (or its deployed form) is faster.

Suites (one module each in ``benchmarks/suites/``, whose docstring says what it times):
    layer       one conv, n in {3, 5, 7, 9}: training forward, forward + backward, eval forward.
    model       aconv_resnet20 vs conv_resnet20 (k=7): train step, noise floor, eval forward unfused, fused,
                cropped and compiled, and training at the learned size (train_crop_tol).
    covariance  the train step with 'diag' and 'full' envelopes against 'spherical' ones.
    scaling     the train-step ratio over image and batch sizes.
    ops         compute operations per training step (deterministic counts), grouped and ungrouped.
    dispatch    the host-bound regime of a GPU step, measured on the CPU: tiny twins, one thread.
    gpu         train steps on --device: eager, ungrouped, one CUDA graph, compiled; operations and kernels.

This module is the command line: it runs the chosen suites and prints (and saves) their tables. The ops and
dispatch suites also check deterministic counts against their targets (``benchmarks/guards.py``): a count over
its target prints ``GUARD FAILED: ...`` and the command exits non-zero.

Usage (from the repository root)::

    python -m benchmarks.overhead                       # the CPU suites, ~4 minutes on 2 cores
    python -m benchmarks.overhead --suite model --json results.json
    python -m benchmarks.overhead --suite layer --rounds 5 --threads 1
    python -m benchmarks.overhead --threads 1 --clock cpu   # on a machine busy with other work
    python -m benchmarks.overhead --suite ops           # operations per training step, ~10 s
    python -m benchmarks.overhead --suite dispatch      # the host-bound regime, ~3 minutes
    python -m benchmarks.overhead --device cuda --json gpu.json   # the gpu suite, <= 5 min
"""

import argparse
import functools
import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks import report
from benchmarks.guards import Guard
from benchmarks.suites import covariance, dispatch, gpu, layer, model, ops, scaling
from benchmarks.timing import CLOCKS, CudaEventClock, compare

SUITES = ('layer', 'model', 'covariance', 'scaling', 'ops', 'dispatch', 'gpu')
CPU_SUITES = ('layer', 'model', 'covariance', 'scaling', 'ops')
COMMAND = 'python -m benchmarks.overhead'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split('\n\n')[0])
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
        choices=[pair.name for pair in gpu.GPU_PAIRS],
        default=None,
        help='model pairs of the gpu suite (default: all)',
    )
    parser.add_argument(
        '--gpu-modes',
        nargs='+',
        choices=('ops', *gpu.GPU_MODES),
        default=None,
        help="cases of the gpu suite: 'ops' (operation counts) and timing modes (default: all)",
    )
    parser.add_argument('--json', default=None, help='also write the results to this JSON file (after every gpu case)')
    return parser


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


def _chosen_suites(names: Optional[Sequence[str]], cuda: bool) -> Tuple[str, ...]:
    if names is None:
        return ('gpu',) if cuda else CPU_SUITES
    return SUITES if 'all' in names else tuple(names)


def run_suites(
    args: argparse.Namespace, suites: Sequence[str], device: str, results: Dict, save: Callable[[], None]
) -> List[Guard]:
    """Run ``suites`` in their fixed order with the options of ``args``, adding their rows to ``results``;
    returns the guards of their counts."""
    rows, op_rows = results['cases'], results['op_counts']
    checks: List[Guard] = []
    measure = functools.partial(compare, rounds=args.rounds, clock=args.clock)
    if 'layer' in suites:
        rows += layer.layer_cases(measure)
    if 'model' in suites:
        rows += model.model_cases(
            functools.partial(measure, rounds=args.model_rounds), compile_model=not args.no_compile
        )
    if 'covariance' in suites:
        rows += covariance.covariance_cases(functools.partial(measure, rounds=args.model_rounds))
    if 'scaling' in suites:
        rows += scaling.scaling_cases(functools.partial(measure, rounds=max(3, args.rounds - 2)))
    if 'ops' in suites:
        print(report.table_header(ops.OP_HEADER), flush=True)
        ops_rows = ops.ops_cases()
        op_rows += ops_rows
        checks += ops.guards(ops_rows)
    if 'dispatch' in suites:
        dispatch_rows, results['dispatch_counts'] = dispatch.dispatch_cases(
            functools.partial(measure, rounds=args.dispatch_rounds, warmup=5, min_round_s=0.1),
            compile_model=not args.no_compile,
        )
        rows += dispatch_rows
        checks += dispatch.guards(results['dispatch_counts'])
    if 'gpu' in suites:
        clock = CudaEventClock() if torch.device(device).type == 'cuda' else args.clock
        gpu_rows, gpu_op_rows, failures = gpu.gpu_cases(
            device,
            functools.partial(compare, rounds=args.gpu_rounds, warmup=3, min_round_s=0.05, clock=clock),
            compile_backend=args.compile_backend,
            time_budget_s=args.time_budget,
            on_result=save,
            pairs=args.gpu_pairs,
            modes=args.gpu_modes,
        )
        rows += gpu_rows
        op_rows += gpu_op_rows
        results['failures'] += failures
    return checks


def print_summary(results: Dict, checks: Sequence[Guard]) -> None:
    """The tables of all suites run, after their rows were printed one by one, and the guards' verdicts."""
    rows, op_rows = results['cases'], results['op_counts']
    print(
        f'\nratio = median over interleaved rounds of adaptive time / ordinary time (IQR: its quartiles); '
        f'times are medians; peak = extra memory of one call.\n{len(rows)} timed cases in '
        f'{results["machine"]["seconds"]} s\n'
    )
    if rows:
        print(report.format_table(rows))
    if op_rows:
        print(
            f'\ncompute operations per training step (foreach SGD, sigma clamp; target <= '
            f'{ops.OPS_PER_LAYER_TARGET} extra per adaptive layer, {ops.OPS_PER_LAYER_UNGROUPED} ungrouped)\n'
            + ops.format_op_table(op_rows)
        )
    if results.get('dispatch_counts'):
        print('\n' + dispatch.format_dispatch_counts(results['dispatch_counts']))
    for failure in results['failures']:
        print(f'not measured: {failure["case"]}: {failure["error"]}')
    if checks:
        print('\n' + '\n'.join(guard.line() for guard in checks))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = _resolve_device(parser, args.device)
    cuda = torch.device(device).type == 'cuda'
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = _chosen_suites(args.suite, cuda)
    if cuda:
        torch.cuda.set_device(torch.device(device).index or 0)
        torch.backends.cudnn.benchmark = True  # as timm's train.py; warm-up calls pick the algorithms
    command = ' '.join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    info = dict(
        report.machine_info(device), clock='cuda events' if cuda and 'gpu' in suites else args.clock, device=device
    )
    print(f'# {command}\n# {info}\n' + report.table_header(), flush=True)
    results = dict(command=command, machine=info, cases=[], op_counts=[], failures=[])

    def save() -> None:
        if args.json:
            with open(args.json, 'w') as file:
                json.dump(results, file, indent=1)

    start = time.perf_counter()
    checks = run_suites(args, suites, device, results, save)
    info['seconds'] = round(time.perf_counter() - start, 1)
    results['guards'] = [guard.as_dict() for guard in checks]
    print_summary(results, checks)
    save()
    failed = sum(not guard.passed for guard in checks)
    if failed:
        raise SystemExit(f'{failed} of {len(checks)} guards failed: a count exceeds its target (GUARD FAILED above)')
    return results


if __name__ == '__main__':
    main()
