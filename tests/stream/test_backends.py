"""The Redis Streams and Kafka backends end to end: a real redis-server on loopback and
librdkafka's mock cluster (a real Kafka listener on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from streamrec.config import parse_config
from streamrec.data.movielens import load_ml_latest_small
from streamrec.train.online import OnlineTrainer

from .test_online import CONFIG


def _service_missing(what: str) -> None:
    if os.environ.get("STREAMREC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not installed")


@pytest.fixture
def redis_url():
    binary = shutil.which("redis-server")
    if binary is None:
        _service_missing("redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _records(ml_small_dir, n):
    return [
        json.dumps(r).encode() for r in load_ml_latest_small(ml_small_dir).slice(0, n).to_pylist()
    ]


def test_redis_streams_ack_after_checkpoint_and_redeliver_after_a_crash(
    redis_url, tmp_path, ml_small_dir
):
    from streamrec.data.stream.redis_stream import RedisStreamSource

    source = RedisStreamSource(redis_url, "events", "trainers")
    for value in _records(ml_small_dir, 1000):
        source.produce(value)
    cfg = parse_config(CONFIG)  # batches of 200, checkpoint every 7 batches
    crashed = OnlineTrainer(cfg, source, tmp_path / "run", progress=False)
    for _ in range(4):  # 800 events, no checkpoint yet: a crash now loses no acknowledged work
        crashed.step(source.poll(200))
    crashed.checkpoint()  # covers 800 events, acknowledges them
    crashed.step(source.poll(100))  # 100 more delivered and trained, then the process dies
    crashed.close()  # … and its run-directory lock with it
    pending = source.redis.xpending("events", "trainers")["pending"]
    assert pending == 100
    restarted_source = RedisStreamSource(redis_url, "events", "trainers")
    resumed = OnlineTrainer(cfg, restarted_source, tmp_path / "run", progress=False)
    status = resumed.run(stop_when_idle=0.5)
    assert status["events_trained"] == 1000 and status["events_consumed"] == 1000
    assert source.redis.xpending("events", "trainers")["pending"] == 0


def test_kafka_mock_cluster_commits_after_the_checkpoint(tmp_path, ml_small_dir):
    ck = pytest.importorskip("confluent_kafka")
    from streamrec.data.stream.kafka import KafkaSource

    cluster = ck.Producer({"test.mock.num.brokers": 1})
    brokers = ",".join(
        f"{b.host}:{b.port}" for b in cluster.list_topics(timeout=10).brokers.values()
    )
    producer = ck.Producer({"bootstrap.servers": brokers})
    for value in _records(ml_small_dir, 600):
        producer.produce("events", value=value, partition=0)
    assert producer.flush(10) == 0
    source = KafkaSource(brokers, "events", "trainers")
    deadline = time.time() + 20
    while source.head() < 600 and time.time() < deadline:
        time.sleep(0.1)
    status = OnlineTrainer(parse_config(CONFIG), source, tmp_path / "run", progress=False).run(
        stop_when_idle=1.0
    )
    assert status["events_trained"] == 600 and status["lag"] == 0
    committed = source.consumer.committed([ck.TopicPartition("events", 0)], timeout=10)
    assert committed[0].offset == 600
    again = KafkaSource(brokers, "events", "trainers")
    assert again.position == 600 and again.poll(10, timeout=0.5) == []
