"""The server's Prometheus metrics (GET /metrics), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streamrec_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "streamrec_request_seconds",
            "request latency",
            ["endpoint"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_rows = Histogram(
            "streamrec_batch_rows",
            "rows per inference batch",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )
        self.batch_seconds = Histogram(
            "streamrec_batch_seconds", "inference time per batch", registry=r
        )
        self.queue_rows = Gauge("streamrec_queue_rows", "rows waiting for inference", registry=r)
        self.cache_hits = Counter("streamrec_cache_hits", "rows served from the cache", registry=r)
        self.cache_misses = Counter("streamrec_cache_misses", "rows computed", registry=r)
        self.deltas = Counter("streamrec_deltas_applied", "deltas applied in place", registry=r)
        self.reloads = Counter("streamrec_model_reloads", "full model swaps", registry=r)
        self.quarantined = Counter(
            "streamrec_deltas_quarantined", "deltas skipped as corrupt or unreadable", registry=r
        )
        self.degraded = Gauge(
            "streamrec_degraded",
            "1 while the served model may be stale (a quarantined delta, a model that failed "
            "to load)",
            registry=r,
        )
        self.delta_lag = Gauge(
            "streamrec_delta_lag_seconds",
            "seconds from a delta's creation to its application",
            registry=r,
        )
