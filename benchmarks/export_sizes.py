"""Is running each filter at its learned size faster than one size per layer, or the full grid?

Compares, interleaved in one process (``benchmarks/timing.py``: warm-up, alternating rounds,
median of the per-round ratios), eval forward passes of

- ``bucketed``: ``export_learned_sizes(model, crop_tol)``, one conv per learned size, outputs
  concatenated; where the next layers allow it the output permutation is folded into them;
- ``gather``: the same without folding (``fold_permutation=False``): every bucketed layer
  gathers its channels back into order;
- ``single``: ``export_learned_sizes(..., strategy='single')``, one conv per layer at its largest
  learned size (the same per-filter guarantee, no concatenation);
- ``layer crop``: ``fuse_convs(model, crop_tol)``, one crop per layer from the layer's total
  energy (the pre-existing single-size crop, a looser guarantee per filter);
- ``full``: ``fuse_convs(model)``, the full n×n grid;
- ``auto``: ``export_learned_sizes(..., strategy='auto')``, per layer the faster of bucketed and single.

Ratios below 1 mean the first variant is faster. Cases:

    layer   one 7×7 layer, mixed sizes (half 3×3, a quarter 5×5, a quarter 7×7 by sigma),
            64/128/256 channels at 32/16/8 pixels, batch 32: where bucketing wins and loses.
    model   aconv_resnet20 (k=7, batch 64, 32×32) with the same mix in every layer, and the
            paper's simple CNN (k=7) trained on digits with a size budget (its real learned sizes).

Usage (from the repository root)::

    python -m benchmarks.export_sizes                        # both suites, ~3 minutes on 2 cores
    python -m benchmarks.export_sizes --suite layer --threads 1 --clock cpu --json export.json
"""

import argparse
import copy
import functools
import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv
from benchmarks.report import machine_info, table_header
from benchmarks.steps import eval_forward_fn, relative_error
from benchmarks.timing import CLOCKS, compare
from timm_aconv.layers import MixedSizeConv

SUITES = ('layer', 'model')
COMMAND = 'python -m benchmarks.export_sizes'
CROP_TOL = 1e-3
GRID = 7
# sigma (normalized units) whose envelope keeps all but ~1e-3 of its energy in a 3×3 / 5×5 / the 7×7 window
SIZE_SIGMA = {3: 0.08, 5: 0.14, 7: 0.5}
MIX = {3: 0.5, 5: 0.25, 7: 0.25}  # share of the filters of each size
LAYER_SHAPES = [(32, 64, 32), (32, 128, 16), (32, 256, 8), (32, 16, 32)]  # (batch, channels, pixels)
PAIRS = [
    ('bucketed', 'single'),
    ('bucketed', 'full'),
    ('bucketed', 'layer crop'),
    ('bucketed', 'gather'),
    ('auto', 'full'),
]


def set_mixed_sigmas(model: nn.Module, mix: Dict[int, float] = MIX) -> None:
    """Every adaptive layer: filters get the sigma of each size in proportion ``mix`` (interleaved)."""
    with torch.no_grad():
        for layer in timm_aconv.adaptive_layers(model):
            layer.sigma_bounds = (0.01, float(GRID))
            count = layer.out_channels
            values = []
            for size, share in mix.items():
                values += [SIZE_SIGMA[size]] * round(share * count)
            values = (values + [SIZE_SIGMA[max(mix)]] * count)[:count]
            order = torch.randperm(count, generator=torch.Generator().manual_seed(count))
            layer.sigma.copy_(torch.tensor(values)[order])


def variants(model: nn.Module, x: torch.Tensor) -> Dict[str, nn.Module]:
    model = model.eval()
    export = functools.partial(timm_aconv.export_learned_sizes, crop_tol=CROP_TOL)
    return {
        'bucketed': export(copy.deepcopy(model)),
        'gather': export(copy.deepcopy(model), fold_permutation=False),
        'single': export(copy.deepcopy(model), strategy='single'),
        'auto': export(copy.deepcopy(model), strategy='auto', example_inputs=x),
        'layer crop': timm_aconv.fuse_convs(copy.deepcopy(model), crop_tol=CROP_TOL),
        'full': timm_aconv.fuse_convs(copy.deepcopy(model)),
    }


def describe(module: nn.Module) -> str:
    """Filters per kernel size over the model's convolutions, and how many layers are bucketed / gather."""
    counts: Dict[int, int] = {}
    bucketed = gathered = 0
    for child in module.modules():
        if isinstance(child, MixedSizeConv):
            bucketed += 1
            gathered += child.reorder_output
        elif isinstance(child, nn.Conv2d):
            counts[child.kernel_size[0]] = counts.get(child.kernel_size[0], 0) + child.out_channels
    sizes = ' '.join(f'{size}x{size}:{filters}' for size, filters in sorted(counts.items()))
    return f'{sizes}' + (f' ({bucketed} bucketed layers, {gathered} gather)' if bucketed else '')


def run_pairs(suite: str, case: str, model: nn.Module, x: torch.Tensor, measure: Callable) -> List[Dict]:
    built = variants(model, x)
    reference = eval_forward_fn(model, x)()
    rows = []
    for first, second in PAIRS:
        comparison = measure(eval_forward_fn(built[first], x), eval_forward_fn(built[second], x))
        errors = [relative_error(eval_forward_fn(built[name], x)(), reference) for name in (first, second)]
        row = dict(
            suite=suite,
            case=case,
            first=first,
            second=second,
            **comparison.as_dict(),
            note=f'A: {describe(built[first])}; B: {describe(built[second])}; rel. error vs adaptive '
            f'A {errors[0]:.1e}, B {errors[1]:.1e}',
        )
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- suites
def layer_cases(measure: Callable) -> List[Dict]:
    rows = []
    for batch, channels, pixels in LAYER_SHAPES:
        torch.manual_seed(0)
        layer = timm_aconv.AdaptiveConv2d(channels, channels, GRID, padding=GRID // 2, bias=False)
        set_mixed_sigmas(layer)
        x = torch.randn(batch, channels, pixels, pixels)
        rows += run_pairs('layer', f'{batch}x{channels}x{pixels}x{pixels}', layer, x, measure)
    return rows


def train_digits_cnn(steps: int = 300, budget: float = 0.3) -> Tuple[nn.Module, torch.Tensor]:
    """The simple CNN (k=7, 32 filters, digits at 16×16) trained with a size budget: real mixed sizes."""
    from timm_aconv.experiments.datasets import build_classification_data

    train_set, val_set, _ = build_classification_data('digits', 'data', False, 16, False, 0)
    images = torch.stack([train_set[i][0] for i in range(len(train_set))])
    labels = torch.tensor([train_set[i][1] for i in range(len(train_set))])
    torch.manual_seed(0)
    model = timm.create_model('aconv_simple_cnn', img_size=16, in_chans=1, num_classes=10, sigma_bounds=(0.05, 7))
    optimizer = torch.optim.SGD(timm_aconv.param_groups(model), lr=0.05, momentum=0.9)
    timm_aconv.register_sigma_clamp(optimizer, model)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index]) + timm_aconv.size_penalty(model, budget)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    val_images = torch.stack([val_set[i][0] for i in range(len(val_set))])
    return model.eval(), val_images


def model_cases(measure: Callable) -> List[Dict]:
    torch.manual_seed(0)
    resnet = timm.create_model('aconv_resnet20', kernel_size=GRID)
    set_mixed_sigmas(resnet)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = run_pairs('model', 'aconv_resnet20 b64 32x32', resnet, x, measure)
    start = time.perf_counter()
    cnn, val_images = train_digits_cnn()
    print(
        f'# simple CNN trained in {time.perf_counter() - start:.0f} s; learned sizes:\n'
        + '\n'.join('#   ' + line for line in str(timm_aconv.learned_kernel_sizes(cnn, CROP_TOL)).splitlines()),
        flush=True,
    )
    rows += run_pairs('model', f'simple CNN (digits, budget 0.3) b{len(val_images)} 16x16', cnn, val_images, measure)
    return rows


# ----------------------------------------------------------------------------------- output
HEADER = ('suite', 'case', 'A', 'B', 'A ms', 'B ms', 'ratio A/B', 'ratio IQR', 'note')


def format_row(row: Dict) -> str:
    return (
        f'| {row["suite"]} | {row["case"]} | {row["first"]} | {row["second"]} | {row["adaptive_ms"]:.2f} | '
        f'{row["ordinary_ms"]:.2f} | **{row["ratio"]:.3f}** | {row["ratio_q1"]:.3f}–{row["ratio_q3"]:.3f} | '
        f'{row["note"]} |'
    )


def format_table(rows: List[Dict]) -> str:
    lines = [table_header(HEADER), '|' + '---|' * len(HEADER)]
    return '\n'.join(lines + [format_row(row) for row in rows])


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split('\n\n')[0])
    parser.add_argument('--suite', nargs='+', choices=(*SUITES, 'all'), default=['all'])
    parser.add_argument('--rounds', type=int, default=11, help='timed rounds per pair (default 11)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    parser.add_argument(
        '--clock',
        choices=CLOCKS,
        default='wall',
        help="'wall' (default) or 'cpu': CPU time of this process, for a busy machine (use --threads 1)",
    )
    parser.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = SUITES if 'all' in args.suite else tuple(args.suite)
    info = dict(machine_info(), clock=args.clock, crop_tol=CROP_TOL)
    command = ' '.join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    print(f'# {command}\n# {info}\n' + table_header(HEADER), flush=True)
    measure = functools.partial(compare, rounds=args.rounds, clock=args.clock, memory=False)
    start = time.perf_counter()
    rows = []
    if 'layer' in suites:
        rows += layer_cases(measure)
    if 'model' in suites:
        rows += model_cases(measure)
    info['seconds'] = round(time.perf_counter() - start, 1)
    print(
        f'\nratio = median over interleaved rounds of time(A) / time(B), eval forward; '
        f'{len(rows)} pairs in {info["seconds"]} s\n'
    )
    print(format_table(rows))
    results = dict(command=command, machine=info, cases=rows)
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(results, file, indent=1)
    return results


if __name__ == '__main__':
    main()
