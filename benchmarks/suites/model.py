"""The model suite: ``aconv_resnet20`` vs ``conv_resnet20`` (same k=7), batch 64, 32x32.

Train step (forward, backward, SGD step, sigma clamp) and its noise floor (ordinary vs an identical ordinary
model), eval forward, fused (``fuse_convs``), cropped (sigmas set to fit 3x3 / 5x5, ``fuse_convs(crop_tol=...)``)
and ``torch.compile``'d eval forward; and training at the learned size (:func:`train_crop_cases`).
"""

import copy
import time
from typing import Dict, List, Tuple

import timm
import torch
import torch.nn as nn

import timm_aconv
from benchmarks import report
from benchmarks.steps import MODEL_KERNEL_SIZE, eval_forward_fn, relative_error, resnet20_pair, train_step_fn
from benchmarks.timing import Measure

# sigma that keeps all but ~1e-4 of the envelope energy in a centred 3x3 / 5x5 window of the 7x7
# grid (0.1 is the paper's smallest initial sigma; the default clamp (1/7, 7) would need
# sigma_bounds=(0.1, 7)), and the energy tolerance of the crop
CROP_SIGMA = {3: 0.1, 5: 0.15}
CROP_TOL = 1e-3
# sigma whose training window at train_crop_tol=CROP_TOL is 3x3 / 5x5 (the window holds the envelope's energy
# and its derivative's in sigma, so these are smaller than CROP_SIGMA), and the batch of those cases
TRAIN_CROP_SIGMA = {3: 0.075, 5: 0.11}
TRAIN_CROP_BATCH = 32


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
    results.append(report.row('model', 'train step b64 32x32 unfused', comparison, note))
    # the same measurement of two identical ordinary models: how far from 1 noise alone moves a ratio
    comparison = measure(
        train_step_fn(copy.deepcopy(ordinary), 64, 32), train_step_fn(copy.deepcopy(ordinary), 64, 32), memory=False
    )
    results.append(report.row('model', 'noise floor: ordinary vs ordinary train step', comparison))

    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    comparison = measure(eval_forward_fn(adaptive, x), eval_forward_fn(ordinary, x))
    results.append(report.row('model', 'eval fwd b64 unfused', comparison))

    fused = timm_aconv.fuse_convs(copy.deepcopy(adaptive))
    error = relative_error(eval_forward_fn(fused, x)(), eval_forward_fn(adaptive, x)())
    comparison = measure(eval_forward_fn(fused, x), eval_forward_fn(ordinary, x))
    results.append(report.row('model', 'eval fwd b64 fused', comparison, f'rel. error vs unfused {error:.1e}'))

    for window in CROP_SIGMA:
        shrunk, cropped, sizes = _cropped(adaptive, window)
        error = relative_error(eval_forward_fn(cropped, x)(), eval_forward_fn(shrunk, x)())
        comparison = measure(eval_forward_fn(cropped, x), eval_forward_fn(ordinary, x))
        results.append(
            report.row(
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
            report.row(
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
                report.row(
                    'model',
                    f'train step b{batch} 32x32 at train_crop_tol={CROP_TOL:g} vs conv_resnet20 k={size}',
                    comparison,
                    f'aconv_resnet20 k={MODEL_KERNEL_SIZE}, sigma={sigma}, training windows {windows}, '
                    f'overruns {overruns}',
                )
            )
        comparison = measure(ordinary[window], ordinary[MODEL_KERNEL_SIZE], memory=False)
        results.append(
            report.row(
                'model',
                f'reference: conv_resnet20 k={window} vs k={MODEL_KERNEL_SIZE} train step b{batch} 32x32',
                comparison,
            )
        )
    return results
