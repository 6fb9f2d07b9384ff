"""Online joiner: impressions + user actions → labelled training examples.

An impression {request_id, item_id, event_time, …features} waits in a FIFO queue (with a hash
map from (request_id, item_id) to its entry) for `window_seconds` of event time. An action
{request_id, item_id, action, event_time} that arrives while its impression waits sets that
action's task label to 1; when the window closes — the watermark (the largest event time seen on
either stream, minus `allowed_lateness`) passes impression time + window — the impression is
emitted with its labels (0 for every task that got no action).

The server's impression log (`serve --log-impressions`) holds one record per answered request
— its context features, and per shown item the item's features, position and scores;
`impressions_of` turns it into the per-item impressions joined here, with the features exactly
as the server used them.

Counted, never silently dropped: duplicate impressions (the first one is kept), duplicate
actions (idempotent), late actions (their impression was already emitted), actions for an
impression not seen yet (kept for one window in case it arrives), impressions forced out by the
memory bound. `label_coverage` is the share of emitted impressions with at least one positive.
The whole state is JSON (`state_dict`) so it is checkpointed together with the stream offsets.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


def impressions_of(
    record: dict[str, Any], timestamp: str | None = None, units_per_second: int = 1
) -> list[dict[str, Any]]:
    """One impression per shown item of a server's request record ({"request_id",
    "event_time", "context", "items": [{"item_id", "position", "features", "scores"}]}):
    {context features, item features, item_id, request_id, event_time, position}. Another
    record (already one impression) is returned as it is. `timestamp`: the schema's event-time
    column, filled from event_time (seconds, the server's clock) in the schema's unit."""
    items = record.get("items")
    if not isinstance(items, list):
        return [record]
    context = record.get("context") or {}
    out = []
    for item in items:
        impression = {**context, **(item.get("features") or {})}
        impression["item_id"] = item["item_id"]
        impression["request_id"] = record["request_id"]
        impression["event_time"] = record["event_time"]
        impression["position"] = item.get("position")
        if timestamp is not None:
            impression.setdefault(timestamp, int(record["event_time"] * units_per_second))
        out.append(impression)
    return out


class OnlineJoiner:
    def __init__(
        self,
        tasks: dict[str, str],
        window_seconds: float,
        allowed_lateness: float = 0.0,
        max_pending: int = 1_000_000,
    ) -> None:
        """tasks: action type → label column (e.g. {"click": "click", "like": "like"})."""
        self.tasks = dict(tasks)
        self.window = window_seconds
        self.lateness = allowed_lateness
        self.max_pending = max_pending
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()  # FIFO by arrival
        self._early: OrderedDict[str, tuple[float, set[str]]] = OrderedDict()
        self._emitted_recent: OrderedDict[str, float] = OrderedDict()
        self.watermark = float("-inf")
        self.stats = {
            "impressions": 0,
            "actions": 0,
            "duplicate_impressions": 0,
            "duplicate_actions": 0,
            "late_actions": 0,
            "unknown_actions": 0,
            "early_actions": 0,
            "forced": 0,
            "emitted": 0,
            "emitted_positive": 0,
        }

    @staticmethod
    def key(record: dict[str, Any]) -> str:
        return f"{record['request_id']}\x1f{record['item_id']}"

    def _advance(self, event_time: float) -> None:
        self.watermark = max(self.watermark, event_time - self.lateness)

    def add_impression(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        key = self.key(record)
        self._advance(float(record["event_time"]))
        if key in self._pending or key in self._emitted_recent:
            self.stats["duplicate_impressions"] += 1
            return self._emit_due()
        self.stats["impressions"] += 1
        labels = dict.fromkeys(self.tasks.values(), 0)
        early = self._early.pop(key, None)
        if early is not None:
            for action in early[1]:
                labels[self.tasks[action]] = 1
        self._pending[key] = {"record": record, "labels": labels}
        out = self._emit_due()
        while len(self._pending) > self.max_pending:
            self.stats["forced"] += 1
            out.append(self._emit(*self._pending.popitem(last=False)))
        return out

    def add_action(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        self._advance(float(record["event_time"]))
        action = record.get("action")
        if action not in self.tasks:
            self.stats["unknown_actions"] += 1
            return self._emit_due()
        self.stats["actions"] += 1
        key = self.key(record)
        entry = self._pending.get(key)
        if entry is not None:
            column = self.tasks[action]
            if entry["labels"][column]:
                self.stats["duplicate_actions"] += 1
            entry["labels"][column] = 1
        elif key in self._emitted_recent:
            self.stats["late_actions"] += 1
        else:
            self.stats["early_actions"] += 1
            _, actions = self._early.setdefault(key, (float(record["event_time"]), set()))
            actions.add(action)
        return self._emit_due()

    def _emit(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        self.stats["emitted"] += 1
        if any(entry["labels"].values()):
            self.stats["emitted_positive"] += 1
        self._emitted_recent[key] = float(entry["record"]["event_time"])
        return {**entry["record"], **entry["labels"]}

    def _emit_due(self) -> list[dict[str, Any]]:
        out = []
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if float(entry["record"]["event_time"]) + self.window > self.watermark:
                break
            self._pending.popitem(last=False)
            out.append(self._emit(key, entry))
        horizon = self.watermark - 2 * self.window  # forget what no action can still reach
        while self._emitted_recent and next(iter(self._emitted_recent.values())) < horizon:
            self._emitted_recent.popitem(last=False)
        while self._early and next(iter(self._early.values()))[0] < self.watermark - self.window:
            self._early.popitem(last=False)
        return out

    def flush(self, before: float | None = None) -> list[dict[str, Any]]:
        """Emit what still waits: every impression (end of stream), or those shown before
        `before` (event seconds) — when both streams are idle, the wall clock closes the
        windows that no event will close: an impression logged a minute ago still waits for
        its click, a replayed one from 2008 does not."""
        out = []
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if before is not None and float(entry["record"]["event_time"]) >= before:
                break
            self._pending.popitem(last=False)
            out.append(self._emit(key, entry))
        return out

    @property
    def label_coverage(self) -> float:
        return self.stats["emitted_positive"] / max(1, self.stats["emitted"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "pending": list(self._pending.items()),
            "early": [(k, t, sorted(a)) for k, (t, a) in self._early.items()],
            "emitted_recent": list(self._emitted_recent.items()),
            "watermark": self.watermark,
            "stats": dict(self.stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = OrderedDict((k, v) for k, v in state["pending"])
        self._early = OrderedDict((k, (t, set(a))) for k, t, a in state["early"])
        self._emitted_recent = OrderedDict((k, t) for k, t in state["emitted_recent"])
        self.watermark = state["watermark"]
        self.stats = dict(state["stats"])
