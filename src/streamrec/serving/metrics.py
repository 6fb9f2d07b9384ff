"""The server's Prometheus metrics (GET /metrics), in a registry of its own per app."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily

SCORE_BUCKETS = np.array(
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
)


class ScoreHistogram:
    """A Prometheus histogram of predicted scores, filled a batch at a time with numpy (the
    client's Histogram.observe is one Python call per value: too slow per served row)."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(SCORE_BUCKETS) + 1, np.int64)  # last: above every bound
        self.total = 0.0

    def observe_many(self, scores: np.ndarray) -> None:
        """scores: any shape of probabilities (every task's score counts once)."""
        flat = np.asarray(scores, np.float64).ravel()
        self.counts += np.bincount(
            np.searchsorted(SCORE_BUCKETS, flat, side="left"), minlength=self.counts.size
        )
        self.total += float(flat.sum())

    def collect(self):  # the registry's collector protocol
        cumulative = np.cumsum(self.counts)
        buckets = [(f"{b:g}", int(c)) for b, c in zip(SCORE_BUCKETS, cumulative, strict=False)]
        buckets.append(("+Inf", int(cumulative[-1])))
        family = HistogramMetricFamily(
            "streamrec_predicted_score", "predicted probabilities served (every task)"
        )
        family.add_metric([], buckets, self.total)
        yield family


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
        self.impressions_logged = Counter(
            "streamrec_impressions_logged",
            "answers queued for the impression log (serve --log-impressions)",
            registry=r,
        )
        self.impressions_dropped = Counter(
            "streamrec_impressions_dropped",
            "answers not logged because the impression log's queue was full",
            registry=r,
        )
        self.feedback = Counter(
            "streamrec_feedback_actions",
            "actions accepted on POST /v1/feedback, by whether this server answered the request",
            ["request"],
            registry=r,
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
        self.explored_slots = Counter(
            "streamrec_explored_slots",
            "/v1/recommend slots filled by exploration (serving.explore_share)",
            registry=r,
        )
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
        self.model = Info(
            "streamrec_model", "the served model: name and versions (base, delta, serving)",
            registry=r,
        )
        self.scores = ScoreHistogram()
        r.register(self.scores)
        self.missing_values = Counter(
            "streamrec_missing_feature_values",
            "/v1/rank rows that lacked a model input (left out or null), by feature: such a "
            "row reads the feature's missing value, as an empty training cell does",
            ["feature"],
            registry=r,
        )
        self.ids_looked_up = Counter(
            "streamrec_ids_looked_up", "embedding ids looked up for requests", registry=r
        )
        self.ids_unknown = Counter(
            "streamrec_ids_unknown",
            "of those, ids the model has no row for (read as zeros): rate() of the two is the "
            "unknown-id rate",
            registry=r,
        )
        self.tier_lookups = Counter(
            "streamrec_table_ids_resolved",
            "tables larger than memory: distinct ids per batch looked up, by table",
            ["table"],
            registry=r,
        )
        self.tier_misses = Counter(
            "streamrec_table_dram_misses",
            "of those, ids DRAM did not hold (read from disk, or unknown): the DRAM hit rate "
            "is 1 − rate(misses) / rate(ids_resolved)",
            ["table"],
            registry=r,
        )
        self.tier_rows = Gauge(
            "streamrec_table_rows",
            "tables larger than memory: rows held, by table and tier (dram, disk)",
            ["table", "tier"],
            registry=r,
        )
        self.unavailable = Counter(
            "streamrec_unavailable",
            "503 answers by reason (overloaded: queue full; not_ready: no model serving; "
            "non_finite: the model scored NaN/inf; inference_failed: the model raised)",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "streamrec_recommend_stage_seconds",
            "POST /v1/recommend: seconds per cascade stage (retrieval, preranking, ranking)",
            ["stage"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 1),
        )
        self.allocation_level = Counter(
            "streamrec_allocation_requests",
            "POST /v1/recommend answered per compute level (k1, k2) under compute allocation",
            ["level"],
            registry=r,
        )
        self.allocation_lambda = Gauge(
            "streamrec_allocation_lambda",
            "compute allocation's price of compute λ (0: every request gets the most work)",
            registry=r,
        )
        self.allocation_observed = Gauge(
            "streamrec_allocation_observed_seconds",
            "the latency the allocation controller steers: recent p95 plus event-loop lag",
            registry=r,
        )
        self.variant_requests = Counter(
            "streamrec_variant_requests", "ranking calls answered per model variant",
            ["variant"], registry=r,
        )
        self.variant_failures = Counter(
            "streamrec_variant_failures",
            "ranking calls that failed on a variant (each answered by another)",
            ["variant"], registry=r,
        )
        self.variant_in_rotation = Gauge(
            "streamrec_variant_in_rotation", "1 while a variant takes traffic", ["variant"],
            registry=r,
        )
        self.variant_clicks = Gauge(
            "streamrec_variant_clicks",
            "answered requests that got a click, per variant (from the action stream)",
            ["variant"], registry=r,
        )
        self.shadow_requests = Counter(
            "streamrec_shadow_requests", "ranking calls scored on a shadow variant",
            ["variant"], registry=r,
        )
        self.delta_lag = Gauge(
            "streamrec_delta_lag_seconds",
            "seconds from a delta's creation to its application",
            registry=r,
        )
        self.event_to_served = Gauge(
            "streamrec_event_to_served_seconds",
            "the last delta: seconds from the trainer reading its oldest event to this server "
            "applying it",
            registry=r,
        )
