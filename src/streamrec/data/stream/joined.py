"""JoinedSource: an impressions stream and an actions stream, joined into labelled examples.

Both streams are read ahead into buffers and merged by event time (always taking the earlier of
the two buffer heads, so an action never overtakes the impression it belongs to because its
stream happened to be read further); when one stream has nothing more for now, the other
one's buffer is fed as it is. The `OnlineJoiner` turns the merged events into examples
(impressions whose waiting window closed, with their labels), handed out as messages of a
single stream whose offsets count emitted examples.

Exactly once across two streams: the checkpoint must hold both input positions, the read-ahead
buffers, the joiner's state (impressions still waiting) and the examples emitted but not yet
trained — `state()` returns all of that as JSON and `restore()` puts it back, so `OnlineTrainer`
saves it with the model and a restart continues as if nothing happened. `commit` acknowledges
both inputs up to the positions recorded by the last `state()`, i.e. the last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from streamrec.data.stream.base import Message, PartitionLag, StreamSource
from streamrec.data.stream.joiner import OnlineJoiner, impressions_of


def _position(source: StreamSource) -> Any:
    """An input's resumable position: its `state()` where it has one (a multi-partition Kafka
    topic), else its offset."""
    state = getattr(source, "state", None)
    return state() if state is not None else source.position  # type: ignore[attr-defined]


def _resume(source: StreamSource, position: Any) -> None:
    if isinstance(position, dict):
        source.restore(position)  # type: ignore[attr-defined]
    else:
        source.seek(int(position))


class JoinedSource:
    def __init__(
        self,
        impressions: StreamSource,
        actions: StreamSource,
        joiner: OnlineJoiner,
        timestamp: str | None = None,
        units_per_second: int = 1,
    ) -> None:
        """timestamp: the schema's event-time column (in `units_per_second`), filled in the
        impressions that a server's request records (`impressions_of`) expand into."""
        self.timestamp = timestamp
        self.units_per_second = units_per_second
        self.impressions = impressions
        self.actions = actions
        self.joiner = joiner
        self.position = 0
        self.bad_messages: list[tuple[str, str, str]] = []  # (stream, where, reason)
        self._ready: deque[bytes] = deque()
        self._buffers: dict[str, deque] = {"impressions": deque(), "actions": deque()}
        self._committable: tuple[int, int] | None = None  # input offsets at the last state()
        self._idle_polls = 0

    def _read(
        self, source: StreamSource, name: str, limit: int, timeout: float
    ) -> list[tuple[float, dict[str, Any]]]:
        out = []
        messages = source.poll(limit, timeout)
        inner = getattr(source, "bad_messages", None)  # e.g. a Kafka gap, dead-lettered
        while inner:
            stream, where, reason = inner.pop(0)
            self.bad_messages.append((f"{name} {stream}", where, reason))
        for m in messages:
            try:
                record = json.loads(m.value)
                if name == "impressions":
                    records = impressions_of(record, self.timestamp, self.units_per_second)
                else:
                    records = [record]
                got = []
                for r in records:
                    r["request_id"], r["item_id"]
                    got.append((float(r["event_time"]), r))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                where = m.where or f"offset {m.offset}"
                self.bad_messages.append((name, where, f"cannot join: {e!r}"[:200]))
                continue
            out.extend(got)
        return out

    def _feed(self, name: str) -> None:
        _, record = self._buffers[name].popleft()
        emitted = (
            self.joiner.add_impression(record)
            if name == "impressions"
            else self.joiner.add_action(record)
        )
        self._ready.extend(json.dumps(r, separators=(",", ":")).encode() for r in emitted)

    def poll(self, max_messages: int, timeout: float = 0.0) -> list[Message]:
        if len(self._ready) < max_messages:
            imps, acts = self._buffers["impressions"], self._buffers["actions"]
            got_imps = self._read(self.impressions, "impressions", max_messages, timeout)
            got_acts = self._read(self.actions, "actions", max_messages, 0.0)
            imps.extend(got_imps)
            acts.extend(got_acts)
            while imps and acts:  # two-way merge by event time; impressions first at a tie
                self._feed("impressions" if imps[0][0] <= acts[0][0] else "actions")
            if imps and not got_acts:  # actions have nothing more for now
                while imps:
                    self._feed("impressions")
            if acts and not got_imps:
                while acts:
                    self._feed("actions")
            self._idle_polls = 0 if (got_imps or got_acts) else self._idle_polls + 1
            if self._idle_polls >= 3:  # both inputs drained: close the windows time has closed
                due = self.joiner.flush(before=time.time() - self.joiner.window)
                self._ready.extend(json.dumps(r).encode() for r in due)
        out = []
        while self._ready and len(out) < max_messages:
            out.append(Message(self.position, self._ready.popleft()))
            self.position += 1
        return out

    def seek(self, offset: int) -> None:
        self.position = offset

    def state(self) -> dict[str, Any]:
        self._committable = (self.impressions.position, self.actions.position)
        return {
            "impressions": _position(self.impressions),
            "actions": _position(self.actions),
            "joiner": self.joiner.state_dict(),
            "position": self.position,
            "ready": [r.decode() for r in self._ready],
            "buffers": {k: list(v) for k, v in self._buffers.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        _resume(self.impressions, state["impressions"])
        _resume(self.actions, state["actions"])
        self.joiner.load_state_dict(state["joiner"])
        self.position = int(state["position"])
        self._ready = deque(r.encode() for r in state["ready"])
        self._buffers = {k: deque((t, r) for t, r in v) for k, v in state["buffers"].items()}

    def commit(self, offset: int) -> None:
        if self._committable is not None:
            self.impressions.commit(self._committable[0])
            self.actions.commit(self._committable[1])

    def head(self) -> int:
        return self.position + len(self._ready)

    def partition_lag(self, fresh: bool = True) -> list[PartitionLag]:
        """The inputs' partitions, named "impressions/…" and "actions/…"."""
        out = []
        for name, source in (("impressions", self.impressions), ("actions", self.actions)):
            for lag in source.partition_lag(fresh):
                lag.partition = f"{name}/{lag.partition}"
                out.append(lag)
        return out

    def close(self) -> None:
        self.impressions.close()
        self.actions.close()
