from .latency import CLOCKS, Latency, round_robin_latency, time_calls

__all__ = [
    'CLOCKS',
    'Latency',
    'round_robin_latency',
    'time_calls',
]
