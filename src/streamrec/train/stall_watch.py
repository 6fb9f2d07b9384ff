"""StallWatch: notices a stream source that stopped delivering while messages keep arriving.

A trainer that reads nothing because nothing is produced is idle, not stalled. One that reads
nothing for `stall_seconds` while the stream's head moves (a lost partition leader, an expired
consumer session, a wrong ACL) is stalled: its model ages silently while status.json looks
calm. The online trainer feeds `observe` from its status writes and reports the result in the
log (once when it starts, once when it ends) and in status.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StallWatch:
    stall_seconds: float
    _consumed: int = -1  # events consumed at the last observation that saw progress
    _progress_at: float = 0.0  # when that was (wall seconds)
    _head_at_progress: int = 0  # the stream's head then
    stalled: dict[str, Any] | None = None

    def observe(self, consumed: int, head: int | None, now: float) -> str | None:
        """consumed: events read so far; head: the stream's total head (None: unknown).
        → a line for the log when the state changes (stalled ↔ flowing), else None."""
        if consumed != self._consumed or head is None:
            was = self.stalled
            self._consumed, self._progress_at = consumed, now
            self._head_at_progress = head if head is not None else self._head_at_progress
            self.stalled = None
            if was is not None and head is not None:
                return f"source flowing again after {now - was['since']:.0f} s"
            return None
        waited = now - self._progress_at
        arrived = head - self._head_at_progress
        if waited < self.stall_seconds or arrived <= 0:
            return None
        first = self.stalled is None
        self.stalled = {
            "since": self._progress_at,
            "seconds": waited,
            "new_messages": arrived,
            "reason": f"{arrived:,} new messages arrived but none was read for {waited:.0f} s",
        }
        return f"source stalled: {self.stalled['reason']}" if first else None
