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

    def close(self) -> None: ...
