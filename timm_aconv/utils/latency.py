"""Round-robin latency of several callables measured in the same rounds

Each round calls every candidate back to back, in an order that rotates from round to round,
so load that drifts during a measurement (other processes on a shared machine) hits all
candidates of a round alike. Reported: the median time per call of each candidate and the
median over rounds of its time relative to the first candidate's (the reference) in the same
round. ``clock='cpu'`` counts the CPU time of this process instead of elapsed time
(:func:`time.process_time`, all threads summed): on a machine busy with other work, with one
torch thread, it leaves out the time the scheduler gave to other processes.
"""

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping

__all__ = ['CLOCKS', 'Latency', 'round_robin_latency', 'time_calls']

CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


@dataclass
class Latency:
    """One candidate's median milliseconds per call and median per-round ratio to the reference."""

    ms: float
    ratio: float
    rounds: int
    calls_per_round: int


def time_calls(fn: Callable[[], object], calls: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Mean time per call of ``calls`` back-to-back calls of ``fn``, read from ``clock``."""
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls


def round_robin_latency(
    candidates: Mapping[str, Callable[[], object]],
    rounds: int = 7,
    warmup: int = 2,
    min_round_s: float = 0.01,
    clock: str = 'wall',
) -> Dict[str, Latency]:
    """Time every zero-argument callable in ``candidates`` in the same rounds (see the module docstring).

    Args:
        candidates: name → callable doing the work once; the first is the ratios' reference.
        rounds: timed rounds (>= 1).
        warmup: untimed calls of each candidate first.
        min_round_s: calls per round double until the slowest candidate's round lasts this long.
        clock: 'wall' (elapsed time) or 'cpu' (CPU time of this process), see the module docstring.
    """
    if not candidates:
        raise ValueError('candidates must hold at least one callable')
    if rounds < 1:
        raise ValueError(f'rounds must be >= 1, got {rounds}')
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {sorted(CLOCKS)}, got {clock!r}')
    timer = CLOCKS[clock]
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    calls = 1
    while max(time_calls(candidates[name], calls, timer) for name in names) * calls < min_round_s and calls < 1024:
        calls *= 2
    times: Dict[str, List[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_calls(candidates[name], calls, timer))
    reference = times[names[0]]
    return {
        name: Latency(
            ms=statistics.median(values) * 1e3,
            ratio=statistics.median(value / ref for value, ref in zip(values, reference)),
            rounds=rounds,
            calls_per_round=calls,
        )
        for name, values in times.items()
    }
