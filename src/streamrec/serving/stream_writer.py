"""QueuedStreamWriter: records from request handlers → a stream, without the request waiting.

The server writes two streams: the impression log (what it served, with the features it used)
and the actions that arrive on POST /v1/feedback. A handler `offer`s a record (a dict) to a
bounded queue and returns at once; one background thread encodes the records (msgspec, in C),
appends them to the stream (`data/stream/connect.open_sink`: a local log folder, Kafka or
Redis) and flushes each batch. When the queue is full the record is not taken: `offer` says so
and the caller decides — an impression is dropped and counted, a user's action is refused with
503 so that its client retries. A stream that is unavailable is retried with a capped backoff
while the queue absorbs what arrives meanwhile; nothing is lost without being counted.

Counts (`counts`): offered, written, dropped (queue full), failures (write attempts that
raised) and `unavailable_since` (wall time of the first failure of the current outage).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from streamrec.data.stream.base import StreamSink

log = logging.getLogger("streamrec.serving")

_encode = msgspec.json.Encoder().encode
_BATCH = 1000  # records written between two flushes at most


class QueuedStreamWriter:
    def __init__(
        self, open_sink: Callable[[], StreamSink], name: str, max_queue: int = 10_000
    ) -> None:
        """open_sink: called on the writer thread (a service may be down at start-up: the
        server starts anyway and the writer keeps trying); name: the stream's address, for
        messages."""
        self.name = name
        self.max_queue = max_queue
        self._open_sink = open_sink
        self._sink: StreamSink | None = None
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"streamrec-writer-{name}", daemon=True
        )
        self.counts = {"offered": 0, "written": 0, "dropped": 0, "failures": 0}
        self.unavailable_since: float | None = None
        self.last_error: str | None = None

    def offer(self, record: dict[str, Any]) -> bool:
        """Queue `record` for writing → False (counted as dropped) when the queue is full."""
        self.counts["offered"] += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.counts["dropped"] += 1
            return False
        return True

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to `timeout` seconds), then close the stream."""
        self._stop.set()
        self._thread.join(timeout)
        if self._sink is not None and not self._thread.is_alive():
            try:
                self._sink.close()
            except Exception as e:  # closing a broken connection: nothing left to save
                log.warning("%s: closing: %s", self.name, e)

    def describe(self) -> dict[str, Any]:
        return {
            "stream": self.name,
            **self.counts,
            "queued": self.queued,
            "unavailable_since": self.unavailable_since,
            "last_error": self.last_error,
        }

    def _take(self) -> list[dict[str, Any]]:
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(batch) < _BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        pending: list[bytes] = []
        backoff = 0.2
        while True:
            if not pending:
                if self._stop.is_set() and self._queue.empty():
                    return
                pending = [_encode(r) for r in self._take()]
                if not pending:
                    continue
            try:
                self._write(pending)
            except Exception as e:  # the service is away: keep the batch, try again
                self.counts["failures"] += 1
                self.last_error = str(e)[:300]
                if self.unavailable_since is None:
                    self.unavailable_since = time.time()
                    log.warning("%s: cannot write (%s); retrying", self.name, e)
                self._sink = None  # reopen: a client may not recover by itself
                if self._stop.wait(backoff) and self._queue.empty() and backoff >= 5.0:
                    log.error("%s: stopping with %d records unwritten", self.name, len(pending))
                    self.counts["dropped"] += len(pending)
                    return
                backoff = min(2 * backoff, 5.0)
                continue
            self.counts["written"] += len(pending)
            pending = []
            backoff = 0.2
            if self.unavailable_since is not None:
                log.warning("%s: writing again", self.name)
                self.unavailable_since = None

    def _write(self, encoded: list[bytes]) -> None:
        if self._sink is None:
            self._sink = self._open_sink()
        for value in encoded:
            self._sink.append_raw(value)
        self._sink.flush()
