"""The last minutes of traffic in fixed time buckets, for the status page's chart.

Prometheus histograms hold counts since start; a person looking at the server wants "what is it
doing now": requests per second and latency p50/p99 per bucket over the last `window_s`. Each
request costs one clock read and a list append; a bucket's percentiles are computed once, when
the bucket closes. Called only from the event loop, so it needs no lock.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrafficPoint:
    start: float  # Unix seconds the bucket began
    seconds: float  # its length (the open bucket: so far)
    requests: int
    errors: int  # answers with status ≥ 500
    p50_ms: float | None  # None: no request in the bucket
    p99_ms: float | None

    @property
    def per_second(self) -> float:
        return self.requests / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return {
            "t": round(self.start, 3),
            "qps": round(self.per_second, 3),
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


class RecentTraffic:
    def __init__(self, bucket_seconds: float = 5.0, window_seconds: float = 600.0) -> None:
        self.bucket_seconds = bucket_seconds
        buckets = max(1, int(window_seconds / bucket_seconds))
        self.closed: deque[TrafficPoint] = deque(maxlen=buckets)
        self._start = self._bucket_start(time.time())
        self._latencies: list[float] = []  # seconds, this bucket's requests
        self._errors = 0

    def _bucket_start(self, now: float) -> float:
        return now - now % self.bucket_seconds

    def record(self, seconds: float, status: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now >= self._start + self.bucket_seconds:
            self._roll(now)
        self._latencies.append(seconds)
        if status >= 500:
            self._errors += 1

    def _roll(self, now: float) -> None:
        """Close the open bucket, and add empty ones for the quiet buckets since."""
        self.closed.append(self._point(self._start, self.bucket_seconds))
        start = self._start + self.bucket_seconds
        newest = self._bucket_start(now)
        start = max(start, newest - self.closed.maxlen * self.bucket_seconds)
        while start < newest:
            self.closed.append(TrafficPoint(start, self.bucket_seconds, 0, 0, None, None))
            start += self.bucket_seconds
        self._start = newest
        self._latencies, self._errors = [], 0

    def _point(self, start: float, seconds: float) -> TrafficPoint:
        if not self._latencies:
            return TrafficPoint(start, seconds, 0, self._errors, None, None)
        p50, p99 = np.percentile(np.asarray(self._latencies) * 1000.0, [50, 99])
        return TrafficPoint(
            start, seconds, len(self._latencies), self._errors, round(p50, 3), round(p99, 3)
        )

    def series(self, now: float | None = None) -> list[TrafficPoint]:
        """The closed buckets in the window, then the open one (its rate over its time so far)."""
        now = time.time() if now is None else now
        if now >= self._start + self.bucket_seconds:
            self._roll(now)
        window_start = now - self.closed.maxlen * self.bucket_seconds
        points = [p for p in self.closed if p.start >= window_start]
        points.append(self._point(self._start, max(now - self._start, 1e-3)))
        return points

    def summary(self, seconds: float = 60.0, now: float | None = None) -> dict:
        """Requests per second and latency (ms) over the last `seconds`, from whole buckets:
        p50 is the buckets' p50s weighted by requests (an estimate), p99 the worst bucket's
        p99 (an upper bound — a slow minute is not averaged away)."""
        points = [p for p in self.series(now) if p.start >= (now or time.time()) - seconds]
        total = sum(p.requests for p in points)
        span = sum(p.seconds for p in points)
        busy = [p for p in points if p.requests]
        weights = np.array([p.requests for p in busy], float)
        return {
            "qps": round(total / span, 3) if span else 0.0,
            "requests": total,
            "errors": sum(p.errors for p in points),
            "p50_ms": _weighted_mean([p.p50_ms for p in busy], weights),
            "p99_ms": max((p.p99_ms for p in busy), default=None),
        }


def _weighted_mean(values: list, weights: np.ndarray) -> float | None:
    if not values:
        return None
    return round(float(np.average(np.asarray(values, float), weights=weights)), 3)
