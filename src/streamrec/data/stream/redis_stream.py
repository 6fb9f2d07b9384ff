"""Redis Streams as a stream source, through a consumer group (redis-py).

Messages are read with XREADGROUP and acknowledged (XACK) only when `commit` says the checkpoint
covering them is on disk. After a crash the group's pending list holds exactly the messages
delivered but not covered by a checkpoint; a restarted source reads those first (XREADGROUP from
id 0), then new ones — so nothing is lost and nothing is trained twice. Our integer offsets
count messages in delivery order; the Redis ids behind them are kept until acknowledged.
Each record is the field `data` of a stream entry (`RedisStreamSource.produce` writes one).
"""

from __future__ import annotations

from collections import deque

from streamrec.data.stream.base import Message


class RedisStreamSource:
    def __init__(
        self, url: str, stream: str, group: str = "streamrec", consumer: str = "trainer-0"
    ) -> None:
        try:
            import redis
        except ImportError as e:  # optional extra
            raise ImportError("Redis Streams need redis-py: pip install 'streamrec[redis]'") from e
        self.redis = redis.Redis.from_url(url)
        self.stream, self.group, self.consumer = stream, group, consumer
        try:
            self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self.position = 0
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._pending_first = True  # read our own unacknowledged entries before new ones

    def seek(self, offset: int) -> None:
        """Offsets are local counters: the group's pending list is the durable position."""
        self.position = offset
        self._unacked.clear()
        self._pending_first = True

    def poll(self, max_messages: int, timeout: float = 0.0) -> list[Message]:
        start = "0" if self._pending_first else ">"
        block = None if start == "0" else max(1, int(timeout * 1000))
        reply = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=max_messages, block=block
        )
        entries = reply[0][1] if reply else []
        if start == "0" and not entries:
            self._pending_first = False
            return self.poll(max_messages, timeout)
        out = []
        for entry_id, fields in entries:
            out.append(Message(self.position, fields.get(b"data", b"")))
            self._unacked.append((self.position, entry_id))
            self.position += 1
        if start == "0" and len(entries) < max_messages:
            self._pending_first = False
        return out

    def commit(self, offset: int) -> None:
        ids = []
        while self._unacked and self._unacked[0][0] < offset:
            ids.append(self._unacked.popleft()[1])
        if ids:
            self.redis.xack(self.stream, self.group, *ids)

    def head(self) -> int:
        """Our position plus the entries not yet delivered to the group."""
        groups = self.redis.xinfo_groups(self.stream)
        lag = next((g.get("lag") or 0 for g in groups if g["name"].decode() == self.group), 0)
        return self.position + int(lag)

    def produce(self, value: bytes) -> None:
        self.redis.xadd(self.stream, {"data": value})

    def close(self) -> None:
        self.redis.close()
