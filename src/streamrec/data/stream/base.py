"""The stream-source interface every backend implements.

A source hands out messages in offset order. The consumer (the online trainer) decides when an
offset is durable: it calls `commit(offset)` only after a checkpoint that covers the message is
on disk, and on restart `seek(offset)` to the first message after the last checkpoint — so a
crash neither loses nor double-applies an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Message:
    offset: int  # position in the stream; the next message has offset + 1
    value: bytes  # the encoded record (JSON)
    where: str = ""  # the backend's own name for it, e.g. "partition 3 offset 17" (dead letters)


@dataclass
class PartitionLag:
    """How far one partition (a Kafka partition, a Redis stream, a local log) is behind."""

    partition: str
    offset: int  # the next message this consumer will read
    head: int  # the offset the next produced message will get
    lag: int  # messages produced but not yet consumed (head − offset)
    lag_seconds: float | None  # age of the last message consumed while behind; 0 when caught
    # up; None when unknown (the backend has no timestamps, or nothing was consumed yet)


class StreamUnavailable(RuntimeError):
    """The stream's service did not answer (down, restarting, unreachable). Nothing was
    delivered or acknowledged by the failed call: the caller may retry it once the service is
    back (the online trainer does, within `online.service_timeout_seconds`; CLI exit 4)."""


class StreamPositionError(RuntimeError):
    """The position a source must read from does not exist at the broker: the run cannot go on
    without losing or inventing messages, so it stops with the reason (CLI exit 2)."""


class StreamGap(StreamPositionError):
    """Messages a source can no longer deliver: the broker deleted them (retention, a size
    cap) before this consumer read them. Never skipped silently: by default the run stops with
    this error; `online.on_gap: dead_letter` records each gap in the dead-letter file instead
    and goes on."""

    def __init__(self, stream: str, partition: int | str, first: int, available: int) -> None:
        self.stream, self.partition = stream, partition
        self.first, self.available = first, available  # [first, available) are gone
        self.lost = available - first
        super().__init__(
            f"{stream} partition {partition}: offsets {first}–{available - 1} "
            f"({self.lost:,} messages) were deleted by the broker (retention or a size cap) "
            "before this consumer read them. Raise the topic's retention; to train on past "
            "them, recording the gap in dead_letter.jsonl, set online.on_gap: dead_letter"
        )


GAP_POLICIES = ("fail", "dead_letter")


class StreamSource(Protocol):
    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` messages after the current position (fewer if none arrive
        within `timeout` seconds)."""

    def seek(self, offset: int) -> None:
        """Continue from `offset` (the first message not yet consumed)."""

    def commit(self, offset: int) -> None:
        """Messages before `offset` are durably processed (after the covering checkpoint)."""

    def head(self) -> int:
        """Offset the next produced message will get (lag = head − position)."""

    def partition_lag(self, fresh: bool = True) -> list[PartitionLag]:
        """Position, head and lag of each partition this source reads (status.json).
        fresh=False may answer from what the client already knows (no round trip)."""

    def close(self) -> None: ...


class StreamSink(Protocol):
    """Where `stream produce` writes: a local log, a Kafka topic, a Redis stream."""

    sent: int  # messages appended so far

    def append_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Append one encoded record; `key` keeps one key's messages in order (Kafka: one
        partition per key)."""

    def flush(self) -> None:
        """Return once every appended message is durable at the backend (or raise)."""

    def close(self) -> None: ...
