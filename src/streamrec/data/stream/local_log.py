"""The embedded stream: a directory of append-only segment files, one JSON record per line.

    LOG/00000000000000000000.seg   messages 0 … N−1        (a new segment every N messages)
    LOG/00000000000000100000.seg   messages N … 2N−1
    LOG/committed.<group>          the consumer group's committed offset

A message's offset is its position in the log. Producers append whole lines and fsync on
`flush`; a reader never sees a partial line (an unterminated last line is left for later).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from streamrec.data.stream.base import Message, PartitionLag
from streamrec.store.atomic import write_atomic

SEGMENT_MESSAGES = 100_000


def _segment_name(first_offset: int) -> str:
    return f"{first_offset:020d}.seg"


class LocalLog:
    """Producer side: `append(record)` (a dict, JSON-encoded) or `append_raw(bytes)`."""

    def __init__(self, path: str | Path, segment_messages: int = SEGMENT_MESSAGES) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.segment_messages = segment_messages
        self._next = self._start = count_messages(self.path)
        self._fh = None
        self._fh_first = -1

    @property
    def next_offset(self) -> int:
        return self._next

    def append(self, record: dict[str, Any]) -> int:
        return self.append_raw(json.dumps(record, separators=(",", ":")).encode())

    @property
    def sent(self) -> int:
        """Messages appended by this writer."""
        return self._next - self._start

    def append_raw(self, value: bytes, key: bytes | None = None) -> int:
        """→ the message's offset. `key` is accepted for the StreamSink protocol: one log
        keeps every message in order anyway."""
        if b"\n" in value:
            raise ValueError("a message cannot contain a newline")
        first = self._next - self._next % self.segment_messages
        if self._fh is None or first != self._fh_first:
            if self._fh is not None:
                self._fh.close()
            self._fh = open(self.path / _segment_name(first), "ab")
            self._fh_first = first
        self._fh.write(value + b"\n")
        self._next += 1
        return self._next - 1

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _segments(path: Path) -> list[tuple[int, Path]]:
    return sorted((int(p.stem), p) for p in path.glob("*.seg") if p.stem.isdigit())


def count_messages(path: Path) -> int:
    segs = _segments(path)
    if not segs:
        return 0
    first, last = segs[-1]
    with open(last, "rb") as fh:
        return first + fh.read().count(b"\n")


class LocalLogSource:
    """Consumer side of a LocalLog, implementing `StreamSource`."""

    def __init__(self, path: str | Path, group: str = "default") -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such stream directory")
        self.group = group
        committed = self.path / f"committed.{group}"
        self.position = int(committed.read_text()) if committed.exists() else 0
        self._fh = None
        self._fh_first = -1
        self._fh_line = 0

    def seek(self, offset: int) -> None:
        self.position = offset
        self._close_reader()

    def _close_reader(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _open_at(self, offset: int) -> bool:
        segs = _segments(self.path)
        candidates = [(f, p) for f, p in segs if f <= offset]
        if not candidates:
            return False
        first, path = candidates[-1]
        self._fh = open(path, "rb")
        self._fh_first = first
        self._fh_line = first
        while self._fh_line < offset:  # skip to the offset within the segment
            line = self._fh.readline()
            if not line.endswith(b"\n"):
                self._close_reader()
                return False
            self._fh_line += 1
        return True

    def poll(self, max_messages: int, timeout: float = 0.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while len(out) < max_messages:
            if self._fh is None and not self._open_at(self.position):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
                continue
            pos = self._fh.tell()
            line = self._fh.readline()
            if line.endswith(b"\n"):
                out.append(Message(self.position, line[:-1]))
                self.position += 1
                self._fh_line += 1
                continue
            self._fh.seek(pos)  # partial or no line yet
            nxt = self.path / _segment_name(self.position)
            if line == b"" and nxt.exists() and self._fh_first != self.position:
                self._close_reader()  # this segment is complete: move to the next
                continue
            if out or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        return out

    def commit(self, offset: int) -> None:
        write_atomic(self.path / f"committed.{self.group}", str(offset))

    def head(self) -> int:
        return count_messages(self.path)

    def partition_lag(self, fresh: bool = True) -> list[PartitionLag]:
        head = self.head()
        lag = max(0, head - self.position)
        return [PartitionLag(self.path.name, self.position, head, lag, 0.0 if not lag else None)]

    def close(self) -> None:
        self._close_reader()
