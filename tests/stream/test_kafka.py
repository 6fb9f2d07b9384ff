"""The Kafka source's promise, message by message, against librdkafka's mock cluster: every
(partition, offset) produced is delivered exactly once, across clean runs and kills, and
messages the broker deleted before they were read are a loud gap — never a silent skip.

The mock cluster keeps about 5 MB a partition and deletes its oldest message sets past that
(as retention does on a real broker): ~2 KB messages make that happen with a few thousand."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from streamrec import api
from streamrec.config import parse_config
from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream.base import StreamGap

from .test_online import CONFIG, _wait_for_lock

PADDING = " " * 2000  # JSON allows trailing whitespace: a valid record of ~2 KB
BAD = b"{not json"  # dead-lettered with its partition and offset


def _produce(brokers: str, topic: str, values: list[bytes], partitions: list[int]) -> list:
    """→ the (partition, offset) each value was stored at, in the order given."""
    ck = pytest.importorskip("confluent_kafka")
    producer = ck.Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    stored: list[tuple[int, int] | None] = [None] * len(values)

    def delivered(i):
        def report(err, msg):
            assert err is None, err
            stored[i] = (msg.partition(), msg.offset())

        return report

    for i, (value, p) in enumerate(zip(values, partitions, strict=True)):
        while True:
            try:
                producer.produce(topic, value=value, partition=p, on_delivery=delivered(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert all(s is not None for s in stored)
    return stored


def _records(ml_small_dir, n: int, padding: str = "") -> list[bytes]:
    rows = load_ml_latest_small(ml_small_dir).slice(0, n).to_pylist()
    return [(json.dumps(r) + padding).encode() for r in rows]


def _low_watermark(brokers: str, topic: str, partition: int) -> int:
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": "watermarks"})
    low, _ = consumer.get_watermark_offsets(ck.TopicPartition(topic, partition), timeout=10)
    consumer.close()
    return low


def _dead_lettered(run) -> list[str]:
    path = run / "dead_letter.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["file"] for line in path.read_text().splitlines()]


def _bad_positions(run) -> list[tuple[int, int]]:
    """(partition, offset) of each message dead-lettered as a bad record, with repeats."""
    out = []
    for where in _dead_lettered(run):
        m = re.fullmatch(r"partition (\d+) offset (\d+)", where)
        if m:
            out.append((int(m[1]), int(m[2])))
    return out


def _mixed_stream(brokers: str, ml_small_dir, n: int, seed: int) -> tuple[list, set]:
    """n messages over 4 partitions, every 9th one malformed; → (where each went, the
    positions of the malformed ones)."""
    rng = np.random.default_rng(seed)
    values = _records(ml_small_dir, n)
    bad = set(range(0, n, 9))
    values = [BAD if i in bad else v for i, v in enumerate(values)]
    stored = _produce(brokers, "events", values, rng.integers(0, 4, n).tolist())
    return stored, {stored[i] for i in bad}


def test_messages_deleted_before_they_were_read_stop_the_run_naming_them(
    kafka_brokers, tmp_path, ml_small_dir
):
    """The cause of 5–19% of ml-latest-small going missing: the broker had deleted the oldest
    messages of a full partition, and the source started at the first one left, silently. Now
    `online` stops (exit 2) with the partition and offsets; with `online.on_gap: dead_letter`
    it trains everything still there and records the gap with its count."""
    n = 4_000
    _produce(kafka_brokers, "ratings", _records(ml_small_dir, n, PADDING), [0] * n)
    low = _low_watermark(kafka_brokers, "ratings", 0)
    assert 0 < low < n  # the mock cluster deleted the oldest (the situation under test)
    cfg_path = tmp_path / "online.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    cmd = [sys.executable, "-m", "streamrec", "online", str(cfg_path), "--source",
           f"kafka://{kafka_brokers}/ratings", "--stop-when-idle", "1", "--json"]
    failed = subprocess.run(cmd + ["--out", str(tmp_path / "a")], capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in failed.stderr
    assert f"partition 0: offsets 0–{low - 1} ({low:,} messages)" in errors[0]
    assert "online.on_gap: dead_letter" in errors[0]

    done = subprocess.run(
        cmd + ["--out", str(tmp_path / "b"), "--set", "online.on_gap=dead_letter"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["events_consumed"] == status["events_trained"] == n - low
    assert status["dead_lettered"] == 1 and status["lag"] == 0
    assert _dead_lettered(tmp_path / "b") == [f"kafka ratings partition 0 offsets 0-{low - 1}"]


def test_a_checkpoints_next_messages_deleted_while_stopped_are_a_gap_on_resume(
    kafka_brokers, tmp_path, ml_small_dir
):
    cfg = parse_config(CONFIG)
    url = f"kafka://{kafka_brokers}/ratings"
    _produce(kafka_brokers, "ratings", _records(ml_small_dir, 400, PADDING), [0] * 400)
    first = api.online(cfg, url, tmp_path / "run", group="g", stop_when_idle=1)
    assert first["events_trained"] == 400
    # While the trainer is down the partition fills past the broker's cap: some messages
    # after the checkpoint's offset 400 are deleted unread.
    _produce(kafka_brokers, "ratings", _records(ml_small_dir, 4_000, PADDING), [0] * 4_000)
    low = _low_watermark(kafka_brokers, "ratings", 0)
    assert low > 400
    with pytest.raises(StreamGap) as gap:
        api.online(cfg, url, tmp_path / "run", group="g", stop_when_idle=1)
    assert (gap.value.partition, gap.value.first, gap.value.available) == (0, 400, low)
    # the run directory was let go: the same run continues once the operator accepts the gap
    cfg = cfg.model_copy(update={"online": cfg.online.model_copy(update={"on_gap": "dead_letter"})})
    resumed = api.online(cfg, url, tmp_path / "run", group="g", stop_when_idle=1)
    assert resumed["events_trained"] == 400 + (4_400 - low)
    gap = f"kafka ratings partition 0 offsets 400-{low - 1}"
    assert _dead_lettered(tmp_path / "run")[-1] == gap


def test_a_fetch_the_broker_answers_out_of_range_is_a_gap_not_a_jump_to_the_end(kafka_brokers):
    """librdkafka's default `auto.offset.reset` (latest) would jump to the partition's end;
    the source forces `error` and turns the answer into a gap at the exact offsets."""
    from streamrec.data.stream.kafka import KafkaSource

    values = [json.dumps({"i": i}).encode() + PADDING.encode() for i in range(4_000)]
    _produce(kafka_brokers, "t", values, [0] * len(values))
    low = _low_watermark(kafka_brokers, "t", 0)
    for policy in ("fail", "dead_letter"):
        source = KafkaSource(kafka_brokers, "t", "g", on_gap="dead_letter")
        source.bad_messages.clear()  # the gap at start, seen by the other tests
        source.events_lost = 0
        source.on_gap = policy
        source.next_offsets[0] = 5  # a position the broker no longer holds (as if restored)
        source._assign()
        delivered = []
        first_answer_by = time.monotonic() + 30  # a busy machine's mock broker can be slow
        last_message = None
        try:
            while True:
                got = source.poll(500, 0.2)
                now = time.monotonic()
                last_message = now if got else last_message
                delivered += [int(m.where.split()[-1]) for m in got]
                if last_message is None and now > first_answer_by:
                    break
                if last_message is not None and now - last_message >= 2:  # drained
                    break
        except StreamGap as e:
            assert policy == "fail" and (e.partition, e.first, e.available) == (0, 5, low)
            assert delivered == []
        else:
            assert policy == "dead_letter"
            assert delivered == list(range(low, 4_000))  # the rest, in order, none skipped
            assert source.bad_messages[0][1] == f"partition 0 offsets 5-{low - 1}"
            assert source.events_lost == low - 5
        source.close()


def test_twenty_clean_runs_each_train_every_produced_message_once(
    kafka_brokers, tmp_path, ml_small_dir
):
    """Each run its own consumer group and run directory over one 4-partition topic: the
    malformed messages dead-lettered are exactly the malformed ones produced (by partition and
    offset), and every other message is trained."""
    n = 2_000
    stored, bad = _mixed_stream(kafka_brokers, ml_small_dir, n, seed=0)
    cfg = parse_config(CONFIG)
    for run in range(20):
        out = tmp_path / f"run{run}"
        status = api.online(cfg, f"kafka://{kafka_brokers}/events", out, group=f"g{run}",
                            stop_when_idle=0.5)
        assert status["events_consumed"] == n, run
        assert status["events_trained"] == n - len(bad), run
        assert sorted(_bad_positions(out)) == sorted(bad), run
        heads = {str(p): sum(1 for s in stored if s[0] == p) for p in range(4)}
        assert {p["partition"]: p["offset"] for p in status["partitions"]} == heads


@pytest.mark.slow
def test_ten_killed_and_restarted_command_line_runs_train_every_message_once(
    kafka_brokers, tmp_path, ml_small_dir
):
    """`streamrec online` SIGKILLed at a random moment and started again, ten times over, each
    with its own group: per (partition, offset), every malformed message is dead-lettered once
    and every other one trained once; the group's committed offsets are the last checkpoint's."""
    import confluent_kafka as ck

    n = 2_000
    stored, bad = _mixed_stream(kafka_brokers, ml_small_dir, n, seed=1)
    cfg_path = tmp_path / "online.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))  # deterministic: a checkpoint every 7 batches
    rng = np.random.default_rng(3)
    killed = 0
    for run in range(10):
        out = tmp_path / f"run{run}"
        cmd = [sys.executable, "-m", "streamrec", "online", str(cfg_path), "--source",
               f"kafka://{kafka_brokers}/events", "--out", str(out), "--group", f"g{run}",
               "--stop-when-idle", "0.5"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_lock(proc, out)
        time.sleep(float(rng.uniform(0.2, 1.2)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        final = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        status = json.loads(final.stdout)
        assert status["events_trained"] == n - len(bad), run
        assert sorted(_bad_positions(out)) == sorted(bad), run  # each once, none missing
        consumer = ck.Consumer({"bootstrap.servers": kafka_brokers, "group.id": f"g{run}"})
        tps = [ck.TopicPartition("events", p) for p in range(4)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        consumer.close()
        assert committed == {p: sum(1 for s in stored if s[0] == p) for p in range(4)}
    assert killed >= 7
