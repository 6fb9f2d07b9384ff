"""The Redis Streams and Kafka backends end to end: a real redis-server on loopback and
librdkafka's mock cluster (a real Kafka listener on 127.0.0.1)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from streamrec.config import parse_config
from streamrec.data.movielens import load_ml_latest_small
from streamrec.train.online import OnlineTrainer

from .test_online import CONFIG, _wait_for_lock


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


def test_kafka_mock_cluster_commits_after_the_checkpoint(tmp_path, ml_small_dir, kafka_brokers):
    ck = pytest.importorskip("confluent_kafka")
    from streamrec.data.stream.kafka import KafkaSource

    brokers = kafka_brokers
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
    again = KafkaSource(brokers, "events", "trainers")  # no checkpoint: the group's offsets
    assert again.next_offsets[0] == 600 and again.poll(10, timeout=0.5) == []


def test_redis_kill_between_checkpoint_and_ack_trains_nothing_twice(
    redis_url, tmp_path, ml_small_dir
):
    """The checkpoint is durable but the process dies before XACK: the covered entries are
    still pending. The restart acknowledges them (the checkpoint's last entry id) instead of
    training them a second time."""
    from streamrec.data.stream.redis_stream import RedisStreamSource

    source = RedisStreamSource(redis_url, "events", "trainers")
    for value in _records(ml_small_dir, 1000):
        source.produce(value)
    cfg = parse_config(CONFIG)
    crashed = OnlineTrainer(cfg, source, tmp_path / "run", progress=False)
    for _ in range(3):
        crashed.step(source.poll(200))
    source.commit = lambda offset: None  # killed right after the checkpoint, before XACK
    crashed.checkpoint()
    crashed.close()
    assert source.redis.xpending("events", "trainers")["pending"] == 600
    resumed = OnlineTrainer(
        cfg, RedisStreamSource(redis_url, "events", "trainers"), tmp_path / "run", progress=False
    )
    status = resumed.run(stop_when_idle=0.5)
    assert status["events_consumed"] == 1000 and status["events_trained"] == 1000
    assert source.redis.xpending("events", "trainers")["pending"] == 0


def test_kafka_partitions_that_appear_later_are_read(kafka_brokers):
    """A source started before its topic exists (or before partitions are added) finds the
    partitions on its next refresh and reads each from its start."""
    ck = pytest.importorskip("confluent_kafka")
    from streamrec.data.stream.kafka import KafkaSource

    source = KafkaSource(kafka_brokers, "later", "g", refresh_seconds=0.2)
    assert source.next_offsets == {} and source.poll(10, timeout=0.1) == []
    producer = ck.Producer({"bootstrap.servers": kafka_brokers})
    for i in range(400):
        producer.produce("later", value=b"%d" % i, key=b"%d" % (i % 13))
    assert producer.flush(10) == 0
    got: list = []
    deadline = time.time() + 20
    while len(got) < 400 and time.time() < deadline:
        got += source.poll(100, timeout=0.2)
    assert sorted(int(m.value) for m in got) == list(range(400))
    assert len(source.next_offsets) == 4  # every partition of the mock's new topic
    assert [m.offset for m in got] == list(range(400))  # one running count across partitions
    lags = source.partition_lag()
    assert sum(p.head for p in lags) == 400 and all(p.lag == 0 for p in lags)
    source.close()


def test_status_reports_each_partitions_lag(kafka_brokers, tmp_path, ml_small_dir):
    ck = pytest.importorskip("confluent_kafka")
    from streamrec.data.stream.kafka import KafkaSource

    producer = ck.Producer({"bootstrap.servers": kafka_brokers})
    for i, value in enumerate(_records(ml_small_dir, 1000)):
        producer.produce("events", value=value, key=b"%d" % i)
    assert producer.flush(10) == 0
    source = KafkaSource(kafka_brokers, "events", "g")
    trainer = OnlineTrainer(parse_config(CONFIG), source, tmp_path / "run", progress=False)
    messages: list = []
    while len(messages) < 400:
        messages += source.poll(400 - len(messages), timeout=0.5)
    trainer.step(messages)
    status = trainer.status()
    partitions = status["partitions"]
    assert [p["partition"] for p in partitions] == ["0", "1", "2", "3"]
    assert sum(p["head"] for p in partitions) == 1000
    assert sum(p["offset"] for p in partitions) == 400 == status["next_offset"]
    assert status["lag"] == 600 == sum(p["lag"] for p in partitions)
    for p in partitions:  # seconds: the age of the last message read, where one was
        if p["lag"] == 0:
            assert p["lag_seconds"] == 0.0
        elif p["offset"] > 0:
            assert 0 <= p["lag_seconds"] < 60
        else:  # behind, nothing read yet: unknown, not made up
            assert p["lag_seconds"] is None
    assert status["lag_seconds"] is not None
    assert status["stalled"] is None and status["lag_error"] is None
    trainer.close()
    source.close()


def _produce_from_the_command_line(ml_small_dir, tmp_path, n: int, to: str) -> None:
    table = load_ml_latest_small(ml_small_dir).slice(0, n)
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "events.parquet")
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "stream", "produce", str(tmp_path / "events.parquet"),
         "--to", to, "--key", "user_id", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"] == n


def _train_with_kills(tmp_path, source: str, kills: int, seed: int) -> dict:
    """`streamrec online --source SOURCE`, SIGKILLed `kills` times at random moments after it
    took the run directory, restarted each time; → the final run's --json status."""
    cfg_path = tmp_path / "online.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))  # deterministic: a checkpoint every 7 batches
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "streamrec", "online", str(cfg_path), "--source", source,
           "--out", str(run), "--group", "trainers", "--stop-when-idle", "2"]
    rng = np.random.default_rng(seed)
    killed = 0
    while killed < kills:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_lock(proc, run)
        time.sleep(float(rng.uniform(0.2, 2.5)))
        if proc.poll() is not None:  # it finished first: nothing left to interrupt
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
    final = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    return {"killed": killed, **json.loads(final.stdout)}


@pytest.mark.slow
def test_redis_stream_exactly_once_across_kill_9_from_the_command_line(
    redis_url, tmp_path, ml_small_dir
):
    """The same through `--to/--source redis://…` against a real redis-server: every event
    trained once, nothing left pending or undelivered in the group."""
    import redis

    n = 8_000
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    url = f"redis://{host_port}/ratings"
    _produce_from_the_command_line(ml_small_dir, tmp_path, n, url)
    status = _train_with_kills(tmp_path, url, kills=4, seed=2)
    assert status["killed"] >= 2
    assert status["events_consumed"] == n and status["events_trained"] == n
    assert status["lag"] == 0 and status["partitions"][0]["partition"] == "ratings"
    client = redis.Redis.from_url(redis_url)
    assert client.xpending("ratings", "trainers")["pending"] == 0


def test_a_source_that_stops_reading_while_messages_arrive_is_reported_stalled(
    kafka_brokers, tmp_path
):
    """Partitions paused in the client (as a lost leader or a revoked ACL would leave them):
    the head moves, nothing is read — status.json and the log say so, and say when it ends."""
    ck = pytest.importorskip("confluent_kafka")
    from streamrec.data.stream.kafka import KafkaSource

    producer = ck.Producer({"bootstrap.servers": kafka_brokers})
    producer.produce("events", value=b"{}", partition=0)  # creates the topic
    assert producer.flush(10) == 0
    source = KafkaSource(kafka_brokers, "events", "g")
    lines: list[str] = []
    cfg = parse_config({**CONFIG, "online": {**CONFIG["online"], "stall_seconds": 0.5}})
    trainer = OnlineTrainer(cfg, source, tmp_path / "run", progress=False, log=lines.append)
    trainer.step(source.poll(10, timeout=2.0))
    trainer.write_status()
    source.consumer.pause(source.consumer.assignment())
    for i in range(30):
        producer.produce("events", value=b"{}", key=b"%d" % i)
    assert producer.flush(10) == 0
    time.sleep(0.7)
    assert source.poll(10, timeout=0.1) == []
    trainer.write_status()
    stalled = json.loads((tmp_path / "run" / "status.json").read_text())["stalled"]
    assert stalled is not None and stalled["new_messages"] == 30
    assert any(line.startswith("source stalled: 30 new messages") for line in lines)
    source.consumer.resume(source.consumer.assignment())
    trainer.step(source.poll(30, timeout=2.0))
    trainer.write_status()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["stalled"] is None
    assert lines[-1].startswith("source flowing again")
    trainer.close()
    source.close()


def test_the_joiner_reads_impressions_from_kafka_and_actions_from_redis(
    kafka_brokers, redis_url, tmp_path
):
    """`api.online(source=kafka://…, actions=redis://…)`: any two backends join. Each
    impression is trained once with its label. (Four partitions interleave event times, so
    the window must cover that disorder: window_seconds here spans the whole stream.)"""
    ck = pytest.importorskip("confluent_kafka")
    from streamrec import api
    from streamrec.data.stream.redis_stream import RedisStreamSink

    from .test_joined import CONFIG as JOIN_CONFIG

    rng = np.random.default_rng(0)
    producer = ck.Producer({"bootstrap.servers": kafka_brokers})
    actions = RedisStreamSink(redis_url, "actions")
    clicked = 0
    for i in range(600):
        user, item = int(rng.integers(0, 20)), int(rng.integers(0, 50))
        imp = {"request_id": f"q{i}", "item_id": item, "user_id": user, "event_time": i}
        producer.produce("imps", value=json.dumps(imp).encode(), key=b"%d" % user)
        if rng.random() < 0.3:
            clicked += 1
            act = {"request_id": f"q{i}", "item_id": item, "action": "click", "event_time": i + 5}
            actions.append_raw(json.dumps(act).encode())
    assert producer.flush(10) == 0
    actions.close()
    join = {**JOIN_CONFIG["online"]["join"], "window_seconds": 10_000}
    cfg = parse_config({**JOIN_CONFIG, "online": {**JOIN_CONFIG["online"], "join": join}})
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    status = api.online(
        cfg, f"kafka://{kafka_brokers}/imps", tmp_path / "run",
        actions=f"redis://{host_port}/actions", group="g", stop_when_idle=3.0,
    )
    assert status["events_trained"] == 600 and status["dead_lettered"] == 0
    names = sorted(p["partition"] for p in status["partitions"])
    assert names == ["actions/actions"] + [f"impressions/{p}" for p in range(4)]
    trained = json.loads((tmp_path / "run" / "status.json").read_text())["windowed"]
    assert trained["click"]["count"] == 600
    positives = trained["click"].get("positives")
    assert positives is None or positives == clicked
