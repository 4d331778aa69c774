from .latency import Latency, round_robin_latency
