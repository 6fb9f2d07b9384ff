"""Kafka as a stream source and sink (confluent-kafka): every partition of a topic, one trainer.

One consumer is assigned every partition of the topic (no consumer-group rebalancing: the
trainer, not the broker, owns the position). Nothing is auto-committed. The position is one
next-offset per partition; `state()` returns it as JSON for the trainer's checkpoint and
`restore()` seeks every partition back to it, so a restart after `kill -9` re-reads exactly the
messages after the last checkpoint. `commit(n)` stores the group's offsets as they were when the
checkpoint covering the first n messages took its `state()` — never ahead of a checkpoint.

Messages from different partitions interleave in arrival order (each partition in its own
order). Their `offset` is this source's running count of delivered messages (for a
one-partition topic, Kafka's own offset, as before), and `where` names the partition and Kafka
offset, for dead letters. Partitions added to the topic are found every `refresh_seconds` and
read from their start. Tested against librdkafka's mock cluster (`test.mock.num.brokers`), a
real Kafka listener on 127.0.0.1.

No silent skips. Every partition's offsets are delivered without a gap, or the gap is a
`StreamGap` naming the partition and the offsets (`on_gap="fail"`, the default) or a
dead-letter entry with the count (`on_gap="dead_letter"`, drained from `bad_messages` by the
trainer). Messages go missing when the broker deleted them before they were read — retention,
or a size cap like the mock cluster's (about 5 MB a partition: ml-latest-small keyed by user
loses its oldest 10–20% there before any consumer starts). Three places see it: a start or
restore position below the partition's first offset, librdkafka's offset-out-of-range answer
(`auto.offset.reset` is forced to `error`: its default `latest` would jump to the end), and a
delivered offset beyond the next expected one while the partition's first offset is past the
expected one. An offset hole with nothing deleted (transaction markers, compaction) is no
message and no loss.

Brokers that go away: librdkafka reconnects by itself, so a poll during an outage delivers
nothing. What the trainer needs is to *know*: after a transport error (all brokers down, a
connection lost) every poll asks the cluster for the topic's metadata (at most every 2 s) and
raises `StreamUnavailable` until it answers; so do start-up, commits and offset queries. The
position is untouched by an outage: librdkafka fetches on from it when the brokers return.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from streamrec.data.stream.base import (
    GAP_POLICIES,
    Message,
    PartitionLag,
    StreamGap,
    StreamPositionError,
    StreamUnavailable,
)

PROBE_SECONDS = 2.0  # while brokers are unreachable, a poll asks for metadata this often


def _client() -> Any:
    try:
        import confluent_kafka
    except ImportError as e:  # optional extra
        raise ImportError("Kafka needs confluent-kafka: pip install 'streamrec[kafka]'") from e
    return confluent_kafka


class KafkaSource:
    def __init__(
        self,
        servers: str,
        topic: str,
        group: str = "streamrec",
        settings: dict[str, Any] | None = None,
        refresh_seconds: float = 10.0,
        on_gap: str = "fail",
        request_seconds: float = 10.0,
    ) -> None:
        """settings: extra librdkafka settings (e.g. security.protocol, sasl.*); on_gap: what
        messages deleted before they were read do — "fail" (raise `StreamGap`) or
        "dead_letter" (one dead letter per gap, with its offsets and count; the run goes on);
        request_seconds: the longest one metadata / offset request may wait."""
        self.request_seconds = request_seconds
        if on_gap not in GAP_POLICIES:
            raise ValueError(f"on_gap must be one of {GAP_POLICIES}, not {on_gap!r}")
        ck = _client()
        self.on_gap = on_gap
        self.bad_messages: list[tuple[str, str, str]] = []  # (stream, where, reason)
        self.events_lost = 0  # messages deleted before they were read (dead_letter policy)
        self._ck = ck
        self.servers = servers
        self.topic = topic
        self.refresh_seconds = refresh_seconds
        self._client_settings = {"bootstrap.servers": servers, **(settings or {})}
        self._admin: Any = None  # for lag queries (`_query_heads`), made on first use
        self.consumer = ck.Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                **(settings or {}),
                "auto.offset.reset": "error",  # never jump past messages: see the docstring
            }
        )
        self.position = 0  # messages delivered so far (Message.offset of the next one)
        self.next_offsets: dict[int, int] = {}  # partition → next Kafka offset to deliver
        self._last_timestamp: dict[int, float] = {}  # partition → last delivered (s)
        self._snapshots: deque[tuple[int, dict[int, int]]] = deque(maxlen=64)
        self._refreshed = 0.0
        self.last_error: str | None = None  # the last non-fatal error a poll met
        self._unreachable = False  # a transport error was seen; cleared by a metadata answer
        self._probed = 0.0
        try:
            with self._answering():
                self._discover(from_group=True)
        except BaseException:  # e.g. a StreamGap at the group's position: stop the client
            self.consumer.close()
            raise

    def _is_outage(self, err: Any) -> bool:
        ck = self._ck.KafkaError
        unreachable = {ck._TRANSPORT, ck._ALL_BROKERS_DOWN, ck._TIMED_OUT, ck._RESOLVE,
                       ck._WAIT_COORD, ck.COORDINATOR_NOT_AVAILABLE, ck.NOT_COORDINATOR}
        return not err.fatal() and (err.code() in unreachable or err.retriable())

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """The client's errors of an unreachable cluster as `StreamUnavailable`."""
        try:
            yield
        except self._ck.KafkaException as e:
            err = e.args[0] if e.args else None
            if err is None or not hasattr(err, "code") or not self._is_outage(err):
                raise
            self._unreachable = True
            raise StreamUnavailable(
                f"kafka {self.servers} topic {self.topic}: {err.str()}"
            ) from None

    # -------------------------------------------------------------- partitions
    def _partitions(self) -> list[int]:
        answer = self.consumer.list_topics(self.topic, timeout=self.request_seconds)
        meta = answer.topics.get(self.topic)
        if meta is None or meta.error is not None:
            return []  # not created yet: picked up by a later refresh
        return sorted(meta.partitions)

    def _discover(self, from_group: bool = False) -> None:
        """Assign every partition; ones not seen before start at the group's committed offset
        (at start-up) or at their beginning (a partition added while running)."""
        self._refreshed = time.monotonic()
        new = [p for p in self._partitions() if p not in self.next_offsets]
        if not new:
            return
        start = {p: 0 for p in new}
        if from_group:
            tps = [self._ck.TopicPartition(self.topic, p) for p in new]
            for tp in self.consumer.committed(tps, timeout=self.request_seconds):
                if tp.offset >= 0:
                    start[tp.partition] = tp.offset
        for p in new:  # every answer first, then the change: an outage leaves nothing half-set
            start[p] = self._past_deleted(p, start[p], self._low(p))
        self.next_offsets.update(start)
        if from_group and len(self.next_offsets) == 1:
            self.position = next(iter(self.next_offsets.values()))
        self._assign()

    def _low(self, p: int) -> int:
        """The partition's first offset still held by the broker."""
        tp = self._ck.TopicPartition(self.topic, p)
        return self.consumer.get_watermark_offsets(tp, timeout=self.request_seconds)[0]

    def _check_start(self, p: int) -> None:
        """A position the broker no longer holds is a gap, never a silent jump."""
        self.next_offsets[p] = self._past_deleted(p, self.next_offsets[p], self._low(p))

    def _past_deleted(self, p: int, start: int, low: int) -> int:
        """Where partition p reads on from `start` when the broker's first offset is `low`:
        `start` itself, or — offsets [start, low) gone — raise (on_gap fail) or dead-letter
        the gap and go on at `low`."""
        if low <= start:
            return start
        gap = StreamGap(f"kafka topic {self.topic!r}", p, start, low)
        if self.on_gap == "fail":
            raise gap
        self.bad_messages.append(
            (f"kafka {self.topic}", f"partition {p} offsets {start}-{low - 1}",
             f"{gap.lost} messages deleted by the broker before they were read")
        )
        self.events_lost += gap.lost
        return low

    def _assign(self) -> None:
        self.consumer.assign(
            [self._ck.TopicPartition(self.topic, p, o) for p, o in self.next_offsets.items()]
        )

    # -------------------------------------------------------------- StreamSource
    def seek(self, offset: int) -> None:
        """A bare offset is a position only on a one-partition topic (checkpoints from before
        multi-partition support); otherwise the checkpoint's `state()` is needed."""
        if len(self.next_offsets) > 1:
            raise ValueError(
                f"kafka topic {self.topic!r} has {len(self.next_offsets)} partitions: a single "
                "offset cannot say where to resume (the checkpoint has no source state)"
            )
        self.position = offset
        self.next_offsets = {0: offset}
        with self._answering():
            self._check_start(0)
        self._assign()

    def poll(self, max_messages: int, timeout: float = 0.0) -> list[Message]:
        with self._answering():
            if self._unreachable:
                self._probe()
            if time.monotonic() - self._refreshed >= self.refresh_seconds:
                self._discover()
            return self._poll(max_messages, timeout)

    def _probe(self) -> None:
        """While a transport error stands: one metadata request every PROBE_SECONDS; raises
        (`_answering` makes it StreamUnavailable) until the cluster answers."""
        if time.monotonic() - self._probed < PROBE_SECONDS:
            raise StreamUnavailable(
                f"kafka {self.servers} topic {self.topic}: {self.last_error or 'unreachable'}"
            )
        self._probed = time.monotonic()
        self.consumer.list_topics(self.topic, timeout=PROBE_SECONDS)
        self._unreachable = False

    def _poll(self, max_messages: int, timeout: float) -> list[Message]:
        out = []
        for m in self.consumer.consume(num_messages=max_messages, timeout=max(timeout, 0.01)):
            if m.error() is not None:  # retried by librdkafka unless fatal; a stall shows it
                if m.error().code() == self._ck.KafkaError._AUTO_OFFSET_RESET:
                    self._out_of_range(m.partition())
                    break  # re-assigned: the rest of this batch is fetched again
                if m.error().fatal():
                    raise RuntimeError(f"kafka {self.topic}: {m.error()}")
                self.last_error = m.error().str()
                if m.error().code() in (self._ck.KafkaError._ALL_BROKERS_DOWN,
                                        self._ck.KafkaError._TRANSPORT):
                    self._unreachable = True
                continue
            p, o = m.partition(), m.offset()
            expected = self.next_offsets.get(p, 0)
            if o < expected:
                continue  # fetched before a re-assignment: already delivered
            if o > expected and (low := self._low(p)) > expected:
                self.next_offsets[p] = self._past_deleted(p, expected, min(low, o))
            single = len(self.next_offsets) == 1
            out.append(Message(o if single else self.position, m.value() or b"",
                               f"partition {p} offset {o}"))
            self.position = o + 1 if single else self.position + 1
            self.next_offsets[p] = o + 1
            kind, ms = m.timestamp()
            if kind != self._ck.TIMESTAMP_NOT_AVAILABLE:
                self._last_timestamp[p] = ms / 1000.0
        return out

    def _out_of_range(self, p: int) -> None:
        """The broker no longer holds partition p's next offset (deleted while we were behind,
        or a restored position it never held)."""
        if p not in self.next_offsets:
            return
        tp = self._ck.TopicPartition(self.topic, p)
        low, high = self.consumer.get_watermark_offsets(tp, timeout=self.request_seconds)
        if self.next_offsets[p] > high:
            raise StreamPositionError(
                f"kafka topic {self.topic!r} partition {p}: the position {self.next_offsets[p]} "
                f"is past the partition's end ({high}) — was the topic deleted and created "
                "again? Start a new run directory and consumer group to read it from its start"
            )
        self._check_start(p)  # raises, or moves the partition past the gap
        self._assign()

    def state(self) -> dict[str, Any]:
        """The position as JSON (for the checkpoint); remembered for `commit`."""
        snapshot = dict(self.next_offsets)
        self._snapshots.append((self.position, snapshot))
        return {
            "topic": self.topic,
            "position": self.position,
            "partitions": {str(p): o for p, o in snapshot.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("topic", self.topic) != self.topic:
            raise ValueError(
                f"the checkpoint read kafka topic {state['topic']!r}, not {self.topic!r}"
            )
        self.position = int(state["position"])
        saved = {int(p): int(o) for p, o in state["partitions"].items()}
        self.next_offsets = {p: saved.get(p, 0) for p in set(self.next_offsets) | set(saved)}
        self._snapshots.clear()
        with self._answering():
            for p in sorted(self.next_offsets):
                self._check_start(p)
        self._assign()

    def commit(self, offset: int) -> None:
        """Commit the per-partition offsets of the latest `state()` taken at or before the
        first `offset` messages (conservative: never past a checkpoint)."""
        snapshot = None
        for position, offsets in self._snapshots:
            if position <= offset:
                snapshot = offsets
        if snapshot is None and offset == self.position:
            snapshot = dict(self.next_offsets)
        if snapshot:
            with self._answering():
                self.consumer.commit(
                    offsets=[self._ck.TopicPartition(self.topic, p, o)
                             for p, o in snapshot.items()],
                    asynchronous=False,
                )

    def _query_heads(self, partitions: list[int]) -> dict[int, int]:
        """The brokers' high watermarks, one ListOffsets request on a connection of its own
        (the consumer's would queue it behind a waiting fetch, up to fetch.wait.max.ms)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self._client_settings)
        from confluent_kafka.admin import OffsetSpec

        asked = {self._ck.TopicPartition(self.topic, p): OffsetSpec.latest() for p in partitions}
        answers = self._admin.list_offsets(asked, request_timeout=self.request_seconds)
        return {tp.partition: future.result().offset for tp, future in answers.items()}

    def partition_lag(self, fresh: bool = True) -> list[PartitionLag]:
        """fresh=False reads the high watermarks the last fetches brought (no request: what
        the trainer uses while messages flow); fresh=True, or a partition not fetched yet,
        asks the brokers (what shows a stall: a partition no longer fetched keeps its cached
        head)."""
        heads = {}
        if not fresh:
            for p in self.next_offsets:
                tp = self._ck.TopicPartition(self.topic, p)
                heads[p] = self.consumer.get_watermark_offsets(tp, cached=True)[1]
        unknown = [p for p in self.next_offsets if heads.get(p, -1) < 0]
        if unknown:
            heads.update(self._query_heads(unknown))
        now = time.time()
        out = []
        for p, o in sorted(self.next_offsets.items()):
            last = self._last_timestamp.get(p)
            lag = max(0, heads[p] - o)
            seconds = (now - last) if lag and last is not None else (0.0 if not lag else None)
            out.append(PartitionLag(str(p), o, heads[p], lag, seconds))
        return out

    def head(self) -> int:
        return self.position + sum(p.lag for p in self.partition_lag())

    def close(self) -> None:
        self.consumer.close()


class KafkaSink:
    """Appends messages to a topic (keyed messages keep their order within a partition)."""

    def __init__(
        self,
        servers: str,
        topic: str,
        settings: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """timeout: seconds to reach the cluster at the start, and for each message to be
        delivered (librdkafka's message.timeout.ms); then StreamUnavailable."""
        ck = _client()
        self.servers, self.topic, self.timeout = servers, topic, timeout
        self.sent = 0
        self.failed: list[str] = []
        self.producer = ck.Producer({
            "bootstrap.servers": servers,
            "linger.ms": 20,
            "message.timeout.ms": int(timeout * 1000),
            **(settings or {}),
        })
        try:
            self.producer.list_topics(timeout=timeout)
        except ck.KafkaException as e:
            raise StreamUnavailable(
                f"kafka {servers}: no answer within {timeout:g} s ({e.args[0].str()})"
            ) from None

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None and len(self.failed) < 5:
            self.failed.append(str(err))

    def append_raw(self, value: bytes, key: bytes | None = None) -> None:
        if self.failed:  # a message already timed out: the cluster is away, say so now
            self.flush()
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.1)
        self.producer.poll(0)
        self.sent += 1

    def flush(self) -> None:
        left = self.producer.flush(self.timeout + 5)  # each message times out by itself
        if left or self.failed:
            raise StreamUnavailable(
                f"kafka {self.servers} topic {self.topic}: {left + len(self.failed)} or more "
                "messages not delivered"
                + (f" ({'; '.join(self.failed)})" if self.failed else "")
            )

    def close(self) -> None:
        self.flush()
