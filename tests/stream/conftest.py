"""Services the stream tests talk to: a real redis-server on loopback (installed by .ci/run)
and librdkafka's mock cluster (a real Kafka listener on 127.0.0.1, inside this process)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest


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


@pytest.fixture
def kafka_brokers():
    """HOST:PORT of a fresh one-broker mock cluster; topics are created on first use with 4
    partitions (the mock's default). It lives as long as the test holds this fixture."""
    ck = pytest.importorskip("confluent_kafka")
    cluster = ck.Producer({"test.mock.num.brokers": 1})
    brokers = ",".join(
        f"{b.host}:{b.port}" for b in cluster.list_topics(timeout=10).brokers.values()
    )
    yield brokers
    cluster.flush(1)
