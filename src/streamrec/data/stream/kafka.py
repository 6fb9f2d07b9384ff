"""Kafka as a stream source (confluent-kafka), one partition per consumer.

Offsets are Kafka's own. Nothing is auto-committed: `commit(offset)` stores the group's offset
only after the trainer's checkpoint covering the messages before it is on disk, and a restart
seeks to the offset saved in that checkpoint. Tested against librdkafka's mock cluster
(`test.mock.num.brokers`), which opens a real Kafka listener on 127.0.0.1.
Multi-partition topics need one trainer (or one source) per partition for now.
"""

from __future__ import annotations

from streamrec.data.stream.base import Message


class KafkaSource:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group: str = "streamrec",
        partition: int = 0,
        extra: dict | None = None,
    ) -> None:
        try:
            import confluent_kafka as ck
        except ImportError as e:  # optional extra
            raise ImportError("Kafka needs confluent-kafka: pip install 'streamrec[kafka]'") from e
        self._ck = ck
        self.topic, self.partition = topic, partition
        self.consumer = ck.Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **(extra or {}),
            }
        )
        committed = self.consumer.committed([ck.TopicPartition(topic, partition)], timeout=10)
        start = committed[0].offset if committed and committed[0].offset >= 0 else 0
        self.seek(start)

    def seek(self, offset: int) -> None:
        self.position = offset
        self.consumer.assign([self._ck.TopicPartition(self.topic, self.partition, offset)])

    def poll(self, max_messages: int, timeout: float = 0.0) -> list[Message]:
        out = []
        for m in self.consumer.consume(num_messages=max_messages, timeout=max(timeout, 0.01)):
            if m.error() is not None:
                if m.error().code() == self._ck.KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"kafka: {m.error()}")
            out.append(Message(m.offset(), m.value() or b""))
            self.position = m.offset() + 1
        return out

    def commit(self, offset: int) -> None:
        self.consumer.commit(
            offsets=[self._ck.TopicPartition(self.topic, self.partition, offset)],
            asynchronous=False,
        )

    def head(self) -> int:
        _, high = self.consumer.get_watermark_offsets(
            self._ck.TopicPartition(self.topic, self.partition), timeout=10
        )
        return high

    def close(self) -> None:
        self.consumer.close()
