"""Request latency histograms, measured in the engine core, exported on /metrics as vLLM names them.

Queue time: arrival to first scheduled; TTFT: arrival to the first output token; inter-token:
between consecutive output increments, per token; end-to-end: arrival to finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# vLLM's bucket bounds (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.buckets) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[index] += times
        self.total += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class LatencyStats:
    queue: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    inter_token: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))


class RequestClock:
    """One request's moments; the core calls these as the request moves."""

    def __init__(self, stats: LatencyStats):
        self.stats = stats
        self.arrival = self.last = time.monotonic()
        self.scheduled = False
        self.first_token = False

    def on_scheduled(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.stats.queue.observe(time.monotonic() - self.arrival)

    def on_tokens(self, count: int) -> None:
        now = time.monotonic()
        if not self.first_token:
            self.first_token = True
            self.stats.ttft.observe(now - self.arrival)
            count -= 1
        if count > 0:
            self.stats.inter_token.observe((now - self.last) / count, count)
        self.last = now

    def on_finished(self) -> None:
        self.stats.e2e.observe(time.monotonic() - self.arrival)
