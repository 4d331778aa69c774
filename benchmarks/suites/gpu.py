"""The gpu suite: train steps timed on ``--device`` (CUDA events on a GPU).

``aconv_resnet20`` vs ``conv_resnet20`` (k=7, batch 128, 32x32) and ``aconv_resnet50`` vs timm's ``resnet50``
(batch 32, 224x224), each eager (also ungrouped, layer by layer), as one CUDA graph (the whole step captured; GPU
only) and ``torch.compile``'d, plus the operations and CUDA kernels per step. Every case runs on its own: one that
fails or runs out of the time budget is reported and the others still run.
"""

import dataclasses
import signal
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

import timm_aconv
from benchmarks import report
from benchmarks.steps import train_step_fn
from benchmarks.suites import ops
from benchmarks.timing import Comparison, Measure, cuda_peak_memory_mib


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
    clock: Callable[[], float] = time.monotonic,
) -> Tuple[List[Dict], List[Dict], List[Dict]]:
    """Train-step timings of :data:`GPU_PAIRS` on ``device`` in every mode of :data:`GPU_MODES`.

    Every case (op counts of a pair, or a pair in one mode) runs on its own: an exception or the
    time budget ends that case only, and it is listed among the failures. Eager and CUDA-graph
    cases of all pairs run before the compiled ones (compiling takes longest). ``on_result`` is
    called after every case (e.g. to save the results so far). ``clock``: seconds, what the budget is
    counted in (a case's own time limit is a ``SIGALRM`` alarm where the platform has one).

    Returns:
        (timing rows, op-count rows, failures).
    """
    rows, op_rows, failures = [], [], []
    deadline = clock() + time_budget_s
    cuda = torch.device(device).type == 'cuda'
    use_alarm = hasattr(signal, 'SIGALRM')
    chosen_pairs = [pair for pair in GPU_PAIRS if pairs is None or pair.name in pairs]
    chosen_modes = ('ops', *GPU_MODES) if modes is None else tuple(modes)
    tasks = [(pair, mode) for pair in chosen_pairs for mode in ('ops', 'ops ungrouped') if 'ops' in chosen_modes]
    # eager first, compiled next, CUDA graphs last: a failed capture can leave the CUDA context unusable
    tasks += [
        (pair, mode)
        for mode in ('eager', 'eager ungrouped', 'compiled', 'cuda graph')
        if mode in chosen_modes
        for pair in chosen_pairs
    ]
    for pair, mode in tasks:
        case = f'{pair.adaptive[0]} vs {pair.ordinary[0]} b{pair.batch} {pair.size}x{pair.size} {mode}'
        left = deadline - clock()
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
                    ops.op_row(
                        case.replace(f' {mode}', '' if grouped else ops.UNGROUPED_SUFFIX),
                        ops.op_overhead(
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
                rows.append(report.row('gpu', case, comparison, note))
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
