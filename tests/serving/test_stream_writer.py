"""The server's background stream writer: offers never block, a full queue is refused and
counted, an unavailable stream is retried until it returns, and nothing queued is lost."""

from __future__ import annotations

import json
import threading
import time

from streamrec.data.stream import LocalLogSource
from streamrec.data.stream.local_log import LocalLog
from streamrec.serving.stream_writer import QueuedStreamWriter


class FlakySink:
    """A sink that raises while `down` is set (as a Kafka or Redis outage does)."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.down = threading.Event()
        self.sent = 0

    def append_raw(self, value: bytes, key: bytes | None = None) -> None:
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.values.append(value)
        self.sent += 1

    def flush(self) -> None:
        if self.down.is_set():
            raise ConnectionError("connection refused")

    def close(self) -> None:
        pass


def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_records_reach_a_local_log_in_order(tmp_path):
    writer = QueuedStreamWriter(lambda: LocalLog(tmp_path / "log"), "log")
    writer.start()
    for i in range(500):
        assert writer.offer({"i": i})
    writer.stop()
    messages = LocalLogSource(tmp_path / "log").poll(1000)
    assert [json.loads(m.value)["i"] for m in messages] == list(range(500))
    assert writer.counts == {"offered": 500, "written": 500, "dropped": 0, "failures": 0}


def test_an_outage_fills_the_queue_drops_are_counted_and_the_rest_arrives():
    sink = FlakySink()
    sink.down.set()
    writer = QueuedStreamWriter(lambda: sink, "flaky", max_queue=10)
    writer.start()
    accepted = [writer.offer({"i": i}) for i in range(30)]
    _until(lambda: writer.unavailable_since is not None)
    assert accepted.count(False) == writer.counts["dropped"] > 0  # 10 queued + those in hand
    sink.down.clear()  # the service is back
    _until(lambda: writer.queued == 0 and writer.unavailable_since is None)
    writer.stop()
    delivered = [json.loads(v)["i"] for v in sink.values]
    assert delivered == [i for i, ok in enumerate(accepted) if ok]  # in order, none twice
    assert writer.counts["written"] == len(delivered) and writer.counts["failures"] >= 1
