"""The event-time clock that expiry and rows' last-seen stamps read: a watermark no single
message can move.

Expiry deletes rows not seen for `ttl_seconds` of *event* time. Measured against a batch's
largest event time, one record dated 2100 — or a producer that switched to milliseconds —
made every row look a century old and deleted nearly all of them. So the clock:

- advances by the batch's median event time (a batch would need half its rows in the future
  to move it there), never by its maximum;
- never moves past this machine's clock + `max_skew_seconds` (no batch can push it there);
- never moves back (a late or replayed batch does not make rows younger).

Replays of old logs (the demo's 1998 MovieLens) keep working: their event times are far behind
the wall clock, and the median follows them as closely as the maximum did, half a batch behind.

    clock = EventClock(max_skew_seconds=86_400)
    now = clock.advance(batch.timestamps)   # seconds, or None before any event time
"""

from __future__ import annotations

import time

import torch


class EventClock:
    def __init__(self, max_skew_seconds: float = 86_400.0) -> None:
        self.max_skew_seconds = max_skew_seconds
        self.now: float | None = None  # seconds; None until a batch carried event times

    def advance(self, timestamps: torch.Tensor | None) -> float | None:
        """Move the watermark by a batch's event times (int64 seconds, [B]); → the clock."""
        if timestamps is None or timestamps.numel() == 0:
            return self.now
        median = float(timestamps.kthvalue((timestamps.numel() + 1) // 2).values)
        candidate = min(median, time.time() + self.max_skew_seconds)
        if self.now is None or candidate > self.now:
            self.now = candidate
        return self.now

    def describe(self) -> str:
        """How this clock reads (for warnings that name it)."""
        return (
            f"event-time watermark {self.now:.0f} s (the batches' median event time, at most "
            f"{self.max_skew_seconds:.0f} s past this machine's clock)"
            if self.now is not None
            else "no event time yet (wall clock)"
        )
