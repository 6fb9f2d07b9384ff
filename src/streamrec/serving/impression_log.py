"""The impression (feature) log: what the server showed, with the features it used to decide.

One record per answered request (`serve --log-impressions URL`), written from a bounded queue
by a background thread (`stream_writer.py`) — serving never waits on it, and a full queue
drops and counts (`/metrics`, `/v1/status`), never fails a request:

    {"request_id": "…", "event_time": 1765000000.123,   # seconds, the server's clock
     "endpoint": "recommend", "versions": {"retrieval": 3, "ranking": 12}, "variant": "main",
     "scored_by": "ranking",
     "context": {"user_id": 7, "age": 30, …},          # as decoded: what ranker or retriever read
     "items": [{"item_id": 50, "position": 0,
                "features": {"genres": ["Drama"]},     # the row the ranker scored (+ item tower's)
                "scores": {"retrieval": 0.41, "ranking": 0.73}}, …]}

The online joiner (`data/stream/joiner.impressions_of`) turns a record into one impression
per shown item — context and item features exactly as served — and labels it with the actions
that name its (request_id, item_id). What was served is what is trained: no feature is
recomputed between serving and training.

`sample_rate` keeps that share of requests (all of a request's items or none, so a sampled
request is whole); the sampled-out ones are counted, not logged.
"""

from __future__ import annotations

import random
import time
from typing import Any

from streamrec.serving.stream_writer import QueuedStreamWriter


class ImpressionLog:
    def __init__(self, writer: QueuedStreamWriter, sample_rate: float = 1.0) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"the impression sample rate is in (0, 1], not {sample_rate}")
        self.writer = writer
        self.sample_rate = sample_rate
        self.answered = 0  # requests that could have been logged
        self.sampled_out = 0
        self._random = random.Random()

    def wants(self) -> bool:
        """Whether the next answered request is logged (call once per request, before building
        its record: the unsampled ones cost nothing more)."""
        self.answered += 1
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            self.sampled_out += 1
            return False
        return True

    def log(
        self,
        request_id: str,
        endpoint: str,
        context: dict[str, Any],
        items: list[dict[str, Any]],
        versions: dict[str, Any],
        **extra: Any,
    ) -> bool:
        """Queue one request's record → False when the queue was full (dropped, counted).
        `items`: per shown item, in the order shown, {"item_id", "features", "scores"};
        positions are added here."""
        for position, item in enumerate(items):
            item["position"] = position
        record = {
            "request_id": request_id,
            "event_time": time.time(),
            "endpoint": endpoint,
            "versions": versions,
            **extra,
            "context": context,
            "items": items,
        }
        return self.writer.offer(record)

    def describe(self) -> dict[str, Any]:
        counts = self.writer.describe()
        return {
            "stream": counts["stream"],
            "sample_rate": self.sample_rate,
            "requests_answered": self.answered,
            "requests_sampled_out": self.sampled_out,
            "records_logged": counts["written"],
            "records_dropped": counts["dropped"],
            "records_queued": counts["queued"],
            "unavailable_since": counts["unavailable_since"],
            "last_error": counts["last_error"],
        }
