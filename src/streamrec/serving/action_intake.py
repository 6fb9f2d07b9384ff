"""POST /v1/feedback: users' actions on what was served, into the action stream.

    {"request_id": "…", "item_id": 50, "action": "click", "value": 1.0, "time": 1765000000}

A valid body is answered 202 and appended (from a bounded queue, `stream_writer.py`) to the
action stream (`serve --actions URL`) as the record the online joiner and the variants' bandit
read: {"request_id", "item_id", "action", "event_time", "value"?}. A client may also write
those records to the stream itself; both paths give the same records. `time` (seconds since
1970, the action's own time) defaults to the moment the server received it.

An id this server did not answer recently (another replica's, or a restart ago) is accepted —
the joiner decides what it joins — and counted as `unknown_request`. A malformed body is 422;
a full queue is 503 with Retry-After (an action is never dropped silently: its client retries).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Annotated, Any

import msgspec

from streamrec.json_records import FINITE, INT64
from streamrec.serving.request import RequestError, TypedBodyReader
from streamrec.serving.stream_writer import QueuedStreamWriter


def latest_action_time(now: float) -> int:
    """The latest `time` an action may carry: a day ahead of this clock, rounded up to the next
    whole hour (24–25 h), so that /openapi.json can state the same bound the check applies for
    the hour in which a client reads it."""
    return (int(now // 3600) + 25) * 3600


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/feedback: one user action on one item of an answer."""

    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    item_id: INT64
    action: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "click"
    value: FINITE | None = None  # e.g. watch seconds, a rating
    time: Annotated[float, msgspec.Meta(ge=0, le=2**32)] | None = None  # seconds since 1970


class RecentRequests:
    """The request ids this server answered lately (at most `size`, oldest forgotten first)."""

    def __init__(self, size: int = 1_000_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, request_id: str) -> None:
        self._ids[request_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids


class ActionIntake:
    def __init__(self, writer: QueuedStreamWriter) -> None:
        self.writer = writer
        self.recent = RecentRequests()
        self.reader = TypedBodyReader(FeedbackBody, "feedback")
        self.counts = {"accepted": 0, "unknown_request": 0, "refused_queue_full": 0}

    def accept(self, body: bytes, max_bytes: int) -> dict[str, Any]:
        """Validate and queue one action → the 202 answer; RequestError 413 / 422 / 503."""
        action = self.reader.read(body, max_bytes)
        now = time.time()
        if action.time is not None and action.time > latest_action_time(now):
            raise RequestError(
                422,
                f"time {action.time:g} is more than a day ahead of this server's clock "
                f"(at most {latest_action_time(now)}): send seconds since 1970 (not "
                "milliseconds), or leave it out",
            )
        record: dict[str, Any] = {
            "request_id": action.request_id,
            "item_id": action.item_id,
            "action": action.action,
            "event_time": action.time if action.time is not None else now,
        }
        if action.value is not None:
            record["value"] = action.value
        if not self.writer.offer(record):
            self.counts["refused_queue_full"] += 1
            raise RequestError(
                503, "the action stream's queue is full; retry shortly", {"Retry-After": "1"}
            )
        self.counts["accepted"] += 1
        known = action.request_id in self.recent
        if not known:
            self.counts["unknown_request"] += 1
        return {"accepted": True, "known_request": known}

    def describe(self) -> dict[str, Any]:
        return {**self.counts, "writer": self.writer.describe()}
