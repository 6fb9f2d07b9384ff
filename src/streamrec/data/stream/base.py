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
