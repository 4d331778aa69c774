"""Side-by-side timing and peak memory of two callables in one process

Ratios between an adaptive and an ordinary variant are measured *interleaved*: after a warm-up,
every round times both back to back (alternating which goes first), and the reported ratio is
the median over rounds of the per-round ratio adaptive / ordinary. Machine load that drifts
during a run then hits both variants of a round alike, which a sequential A-then-B measurement
(or a ratio of two separate medians) cannot promise.

On a machine shared with other work, wall-clock time also counts the time the scheduler gave to
other processes; ``clock='cpu'`` measures the CPU time of this process instead
(:func:`time.process_time`, all threads summed; use it with one thread, since idle OpenMP workers
spin and count as busy). On a GPU, :class:`CudaEventClock` reads the time from CUDA events, so a
round lasts until the GPU has finished its work.
"""

import contextlib
import itertools
import math
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Union

import torch
from torch.profiler import ProfilerActivity, profile

from timm_aconv.utils.latency import CLOCKS, time_calls  # the package's own clocks and timed loop

__all__ = [
    'CLOCKS',
    'Comparison',
    'CudaEventClock',
    'Measure',
    'compare',
    'cuda_peak_memory_mib',
    'peak_memory_mib',
    'quiet_stderr',
]


class CudaEventClock:
    """Seconds of GPU time since the clock was made, from CUDA events on the current stream.

    Each reading records an event and waits for it, i.e. for all work queued before it: the
    time between two readings is the GPU time of what was launched in between, idle gaps (a GPU
    waiting for launches) included.
    """

    def __init__(self) -> None:
        self.previous = torch.cuda.Event(enable_timing=True)
        self.previous.record()
        self.seconds = 0.0

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        # summed from short intervals: elapsed_time is a float32 number of milliseconds
        self.seconds += self.previous.elapsed_time(event) / 1e3
        self.previous = event
        return self.seconds


@dataclass
class Comparison:
    """Medians of one interleaved comparison (times in milliseconds per call)."""

    adaptive_ms: float
    ordinary_ms: float
    ratio: float  # median over rounds of (adaptive time / ordinary time)
    ratio_q1: float  # quartiles of the per-round ratios: the run's noise
    ratio_q3: float
    rounds: int
    calls_per_round: int
    adaptive_peak_mib: float
    ordinary_peak_mib: float

    def as_dict(self) -> Dict[str, float]:
        """Rounded values; a peak memory not measured (NaN) becomes None, so the dict is valid JSON."""
        return {
            key: (None if math.isnan(value) else round(value, 4)) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }


Measure = Callable[..., Comparison]  # compare() with a run's rounds and clock bound (a functools.partial)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines), restoring it after."""
    saved = os.dup(2)
    with open(os.devnull, 'w') as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak CPU memory allocated by torch during one call of ``fn``, above the level at its start.

    Replays the allocation and free events the profiler records (``profile_memory=True``) in
    time order; memory held before the call (parameters, optimizer state, inputs) is not counted.
    """
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda event: event.time_range.start)
    running = itertools.accumulate(event.self_cpu_memory_usage for event in events)
    return max(itertools.chain([0], running)) / 2**20


def cuda_peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated during one call of ``fn``, above the level at its start."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**20


def compare(
    adaptive: Callable[[], object],
    ordinary: Callable[[], object],
    rounds: int = 9,
    warmup: int = 2,
    min_round_s: float = 0.02,
    memory: bool = True,
    clock: Union[str, Callable[[], float]] = 'wall',
) -> Comparison:
    """Time ``adaptive`` and ``ordinary`` interleaved; median times and the median per-round ratio.

    Args:
        adaptive, ordinary: zero-argument callables doing the work once (e.g. one train step).
        rounds: timed rounds; each times both callables, alternating which runs first.
        warmup: untimed calls of each before timing (allocator, oneDNN primitive caches).
        min_round_s: calls per round grow until one round of ``ordinary`` lasts this long.
        memory: also measure the peak memory of one call of each (see :func:`peak_memory_mib`).
        clock: 'wall' (elapsed time) or 'cpu' (CPU time of this process), see the module docstring,
            or a callable returning seconds (e.g. a :class:`CudaEventClock`).
    """
    if not callable(clock) and clock not in CLOCKS:
        raise ValueError(f'clock must be one of {sorted(CLOCKS)} or a callable, got {clock!r}')
    timer = clock if callable(clock) else CLOCKS[clock]
    for _ in range(warmup):
        adaptive()
        ordinary()
    calls = 1
    while time_calls(ordinary, calls, timer) * calls < min_round_s and calls < 1024:
        calls *= 2
    adaptive_times: List[float] = []
    ordinary_times: List[float] = []
    for index in range(rounds):
        if index % 2:
            ordinary_times.append(time_calls(ordinary, calls, timer))
            adaptive_times.append(time_calls(adaptive, calls, timer))
        else:
            adaptive_times.append(time_calls(adaptive, calls, timer))
            ordinary_times.append(time_calls(ordinary, calls, timer))
    round_ratios = [a / o for a, o in zip(adaptive_times, ordinary_times)]
    quartiles = statistics.quantiles(round_ratios, n=4) if rounds > 1 else [round_ratios[0]] * 3
    return Comparison(
        adaptive_ms=statistics.median(adaptive_times) * 1e3,
        ordinary_ms=statistics.median(ordinary_times) * 1e3,
        ratio=statistics.median(round_ratios),
        ratio_q1=quartiles[0],
        ratio_q3=quartiles[2],
        rounds=rounds,
        calls_per_round=calls,
        adaptive_peak_mib=peak_memory_mib(adaptive) if memory else float('nan'),
        ordinary_peak_mib=peak_memory_mib(ordinary) if memory else float('nan'),
    )
