"""Redis Streams as a stream source, through a consumer group (redis-py).

Messages are read with XREADGROUP and acknowledged (XACK) only when `commit` says the checkpoint
covering them is on disk. After a crash the group's pending list holds exactly the messages
delivered but not covered by a checkpoint; a restarted source reads those first (XREADGROUP from
id 0), then new ones — so nothing is lost and nothing is trained twice. Our integer offsets
count messages in delivery order; the Redis ids behind them are kept until acknowledged.
Each record is the field `data` of a stream entry (`RedisStreamSource.produce` writes one).

A lost connection (Redis restarting, a network blip) is `StreamUnavailable`; the next poll
reconnects and first re-reads the group's pending list, so entries Redis handed out in a reply
that never arrived are delivered, and the ones this source already delivered are not again.
Acknowledgements leave the local list only once Redis took them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from streamrec.data.stream.base import (
    Message,
    PartitionLag,
    StreamPositionError,
    StreamUnavailable,
)


def _connect(url: str, settings: dict[str, Any] | None) -> Any:
    try:
        import redis
    except ImportError as e:  # optional extra
        raise ImportError("Redis Streams need redis-py: pip install 'streamrec[redis]'") from e
    # A silent network must not hang a command: connects and replies time out (overridable).
    timeouts = {"socket_connect_timeout": 10, "socket_timeout": 30}
    return redis.Redis.from_url(url, **{**timeouts, **(settings or {})})


def _entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id "<milliseconds>-<sequence>" as a comparable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _entry_seconds(entry_id: bytes | str) -> float:
    """A stream entry id is "<milliseconds>-<sequence>": when the entry was added."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000.0


class RedisStreamSource:
    def __init__(
        self,
        url: str,
        stream: str,
        group: str = "streamrec",
        consumer: str = "trainer-0",
        settings: dict[str, Any] | None = None,
    ) -> None:
        """settings: extra redis-py `Redis(...)` keywords (password, username, ssl_*)."""
        import redis

        self.redis = _connect(url, settings)
        self.url = url
        self.stream, self.group, self.consumer = stream, group, consumer
        with self._answering():
            try:
                self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self.position = 0
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._pending_first = True  # read our own unacknowledged entries before new ones
        self._pending_after: bytes | str = "0"  # the pending list is read from after this id
        self._covered: tuple[int, int] | None = None  # entries ≤ this are in the checkpoint
        self._last_id: str | None = None  # the last entry delivered
        self._last_added: float | None = None  # when the last delivered entry was added (s)

    def seek(self, offset: int) -> None:
        """Offsets are local counters: the group's pending list is the durable position."""
        self.position = offset
        self._unacked.clear()
        self._pending_first, self._pending_after = True, "0"

    def state(self) -> dict[str, Any]:
        """The checkpoint's position: our counter and the last entry it covers. A kill
        between the checkpoint and its XACK leaves covered entries pending; `restore` makes
        the next start acknowledge them instead of training them twice."""
        return {"stream": self.stream, "position": self.position, "last_id": self._last_id}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("stream", self.stream) != self.stream:
            raise ValueError(
                f"the checkpoint read redis stream {state['stream']!r}, not {self.stream!r}"
            )
        self.seek(int(state["position"]))
        self._last_id = state.get("last_id")
        self._covered = None if self._last_id is None else _entry_key(self._last_id)

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Redis's connection errors as `StreamUnavailable`; the next poll re-reads the
        pending list first (a reply lost with the connection left its entries there)."""
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._pending_first, self._pending_after = True, "0"
            raise StreamUnavailable(f"redis {self._where()}: {e}") from None
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):
                raise StreamPositionError(
                    f"redis {self._where()}: the stream or its group {self.group!r} is gone "
                    "(a Redis restart without persistence, or deleted): its position is lost. "
                    "Turn on Redis persistence (appendonly yes); start a new run directory"
                ) from None
            raise

    def _where(self) -> str:
        host = self.url.split("@")[-1].removeprefix("redis://")  # never a password
        return f"{host} stream {self.stream}"

    def poll(self, max_messages: int, timeout: float = 0.0) -> list[Message]:
        with self._answering():
            return self._poll(max_messages, timeout)

    def _poll(self, max_messages: int, timeout: float) -> list[Message]:
        while True:
            pending = self._pending_first
            start = self._pending_after if pending else ">"
            block = None if pending else max(1, int(timeout * 1000))
            reply = self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=max_messages, block=block
            )
            entries = reply[0][1] if reply else []
            if not pending:
                break
            if not entries:
                self._pending_first = False
                continue
            covered = [e for e, _ in entries if self._is_covered(e)]
            if covered:  # trained before the kill, in the checkpoint: acknowledge, skip
                self.redis.xack(self.stream, self.group, *covered)
            self._pending_after = entries[-1][0]
            # entries this process delivered already wait for their checkpoint, unacknowledged
            entries = [(e, f) for e, f in entries if not self._was_delivered(e)]
            if entries:
                break
        out = []
        for entry_id, fields in entries:
            value = fields.get(b"data", b"")
            out.append(Message(self.position, value, f"entry {entry_id.decode()}"))
            self._unacked.append((self.position, entry_id))
            self.position += 1
        if entries:
            self._last_id = entries[-1][0].decode()
            self._last_added = _entry_seconds(entries[-1][0])
        return out

    def _is_covered(self, entry_id: bytes) -> bool:
        return self._covered is not None and _entry_key(entry_id) <= self._covered

    def _was_delivered(self, entry_id: bytes) -> bool:
        """Delivered by this process, or covered by the checkpoint it resumed from (entries
        reach a consumer in id order)."""
        return self._last_id is not None and _entry_key(entry_id) <= _entry_key(self._last_id)

    def commit(self, offset: int) -> None:
        done = 0
        while done < len(self._unacked) and self._unacked[done][0] < offset:
            done += 1
        if done:
            ids = [self._unacked[i][1] for i in range(done)]
            with self._answering():
                self.redis.xack(self.stream, self.group, *ids)
            for _ in range(done):  # only once Redis has them
                self._unacked.popleft()

    def head(self) -> int:
        """Our position plus the entries not yet delivered to the group."""
        return self.position + self._undelivered()

    def _undelivered(self) -> int:
        with self._answering():
            groups = self.redis.xinfo_groups(self.stream)
        lag = next((g.get("lag") or 0 for g in groups if g["name"].decode() == self.group), 0)
        return int(lag)

    def partition_lag(self, fresh: bool = True) -> list[PartitionLag]:
        lag = self._undelivered()
        seconds = 0.0 if not lag else None
        if lag and self._last_added is not None:
            seconds = max(0.0, time.time() - self._last_added)
        return [PartitionLag(self.stream, self.position, self.position + lag, lag, seconds)]

    def produce(self, value: bytes) -> None:
        self.redis.xadd(self.stream, {"data": value})

    def close(self) -> None:
        self.redis.close()


class RedisStreamSink:
    """Appends messages to a stream (field `data`), pipelined in groups of `batch`."""

    def __init__(
        self, url: str, stream: str, settings: dict[str, Any] | None = None, batch: int = 500
    ) -> None:
        self.redis = _connect(url, settings)
        self.url = url
        self.stream, self.batch = stream, batch
        self.sent = 0
        self._pipe = self.redis.pipeline(transaction=False)
        self._queued = 0
        with self._answering():
            self.redis.ping()  # an unreachable server is one line now, not after a batch

    def append_raw(self, value: bytes, key: bytes | None = None) -> None:
        """`key` is ignored: a stream is one ordered sequence."""
        self._pipe.xadd(self.stream, {"data": value})
        self._queued += 1
        self.sent += 1
        if self._queued >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._queued:
            with self._answering():
                self._pipe.execute()
            self._queued = 0

    @contextmanager
    def _answering(self) -> Iterator[None]:
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            host = self.url.split("@")[-1].removeprefix("redis://")
            raise StreamUnavailable(f"redis {host} stream {self.stream}: {e}") from None

    def close(self) -> None:
        self.flush()
        self.redis.close()
