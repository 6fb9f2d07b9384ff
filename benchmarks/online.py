"""Online learning pays: ml-latest-small in time order, a frozen batch model vs the same model
trained online over the second half (Monolith's result), plus online throughput and latency.

    python benchmarks/online.py --json

1. Train DeepFM in batch (1 epoch) on the first half of the log by time; save it.
2. Frozen: score the second half with that model (progressive AUC = plain AUC, it never learns).
3. Online: start from the same saved model and replay the second half through the online
   trainer (predict first, then learn; a delta every `sync_interval_seconds: 5`), reading from a
   local stream that a producer thread fills at --rate events/s.
Reports progressive AUC of both, events/s of the online trainer and event → delta seconds.

    python benchmarks/online.py --sources --json

The same trainer fed from each backend, same run: the first --events records of
ml-latest-small written to a local log, a Kafka topic of 4 partitions (librdkafka's mock
cluster, keyed by user) and a Redis stream (a redis-server started on loopback, if installed);
reported: training events/s from each, and the read-only rate of each source (poll loop, no
training) — for Kafka also two consumers of 2 partitions each in parallel processes (the
"ranks share the partitions" option under torchrun, docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from streamrec.config import load_config
from streamrec.data.loader import BatchLoader
from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.models import build_model
from streamrec.models.persistence import load_model, save_model
from streamrec.schema import input_kinds
from streamrec.train.metrics import MetricAccumulator
from streamrec.train.online import OnlineTrainer
from streamrec.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/data/ml-latest-small")
    ap.add_argument("--rate", type=float, default=5000.0, help="replay rate, events/s")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sources", action="store_true", help="compare stream backends instead")
    ap.add_argument("--events", type=int, default=30_000, help="with --sources")
    ap.add_argument("--repeats", type=int, default=3, help="with --sources: median of N")
    args = ap.parse_args()
    if args.sources:
        report = compare_sources(args.data, args.events, args.repeats)
        print(json.dumps(report) if args.json else json.dumps(report, indent=2))
        return
    cfg = load_config(REPO / "examples" / "mlsmall_online.yaml")
    log = load_ml_latest_small(args.data)
    half = log.num_rows // 2
    first, second = log.slice(0, half), log.slice(half)
    tmp = Path(tempfile.mkdtemp())

    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    trainer = Trainer(model, cfg, progress=False)
    trainer.fit(lambda epoch: BatchLoader(lambda: first.to_batches(65536), cfg.schema, 256))
    kinds = input_kinds(first, cfg.schema.input_columns(with_labels=False))
    save_model(tmp / "batch" / "model", model, cfg, {"input_kinds": kinds})

    frozen = load_model(tmp / "batch").model
    acc = MetricAccumulator(["label"])
    for batch in BatchLoader(lambda: second.to_batches(65536), cfg.schema, 4096):
        acc.update(batch.labels.numpy(), frozen.predict(batch).numpy())
    frozen_auc = acc.lifetime()["label"]["auc"]

    stream = tmp / "stream"
    producer = LocalLog(stream)
    rows = second.to_pylist()

    def produce() -> None:
        t0 = time.monotonic()
        for i, r in enumerate(rows):
            producer.append(r)
            if i % 500 == 499:
                producer.flush()
                wait = (i + 1) / args.rate - (time.monotonic() - t0)
                if wait > 0:
                    time.sleep(wait)
        producer.close()

    cfg.online.init_model = str(tmp / "batch")
    online = OnlineTrainer(cfg, LocalLogSource(stream), tmp / "online", progress=False)
    online.metrics = MetricAccumulator(["label"], keep_lifetime=True)
    thread = threading.Thread(target=produce)
    started = time.perf_counter()
    thread.start()
    status = online.run(stop_when_idle=3.0)
    elapsed = time.perf_counter() - started - 3.0
    thread.join()
    online_auc = online.metrics.lifetime()["label"]["auc"]
    lat = np.array(online.delta_latencies)
    report = {
        "events": len(rows),
        "frozen_progressive_auc": frozen_auc,
        "online_progressive_auc": online_auc,
        "auc_gain": online_auc - frozen_auc,
        "online_events_per_s": status["events_trained"] / elapsed,
        "replay_rate": args.rate,
        "deltas": status["last_delta_version"],
        "event_to_delta_p50_s": float(np.percentile(lat, 50)),
        "event_to_delta_p99_s": float(np.percentile(lat, 99)),
        "sync_interval_seconds": cfg.online.sync_interval_seconds,
        "dead_lettered": status["dead_lettered"],
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


def _redis_server() -> tuple[subprocess.Popen | None, str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    import redis

    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, f"127.0.0.1:{port}"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    return None, None


def _read_all(url: str, group: str, n: int) -> float:
    """Seconds to poll n messages from `url` with nothing else going on."""
    from streamrec.data.stream.connect import open_source

    source = open_source(url, group)
    got, started = 0, None
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        batch = source.poll(1000, timeout=0.2)
        if batch and started is None:
            started = time.perf_counter() - 0.0
        got += len(batch)
    seconds = time.perf_counter() - (started or time.perf_counter())
    source.close()
    return seconds


def _read_partitions(brokers: str, topic: str, partitions: list[int], n: int, out) -> None:
    """One process's share of the "ranks share the partitions" option."""
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"share{partitions}",
                            "enable.auto.commit": False})
    consumer.assign([ck.TopicPartition(topic, p, 0) for p in partitions])
    got = 0
    started = None
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        batch = consumer.consume(1000, 0.2)
        if batch and started is None:
            started = time.perf_counter()
        got += len(batch)
    out.put(time.perf_counter() - (started or time.perf_counter()))
    consumer.close()


def compare_sources(data: str, events: int, repeats: int) -> dict:
    import statistics

    import confluent_kafka as ck

    from streamrec.data.stream.connect import open_sink, open_source

    cfg = load_config(REPO / "examples" / "mlsmall_online.yaml")
    cfg.online.checkpoint_interval_seconds = 1e9  # measure reading and training, not disk
    rows = load_ml_latest_small(data).slice(0, events).to_pylist()
    values = [(json.dumps(r, separators=(",", ":")).encode(), str(r["user_id"]).encode())
              for r in rows]
    tmp = Path(tempfile.mkdtemp())
    cluster = ck.Producer({"test.mock.num.brokers": 1})
    listed = cluster.list_topics(timeout=10).brokers.values()
    brokers = ",".join(f"{b.host}:{b.port}" for b in listed)
    redis_proc, redis_at = _redis_server()
    urls = {"local log": str(tmp / "log"), "kafka (4 partitions)": f"kafka://{brokers}/events"}
    if redis_at is not None:
        urls["redis stream"] = f"redis://{redis_at}/events"
    report: dict = {"events": events, "repeats": repeats}
    try:
        for name, url in urls.items():
            sink = open_sink(url)
            for value, key in values:
                sink.append_raw(value, key)
            sink.close()
            trained, read = [], []
            for r in range(repeats):
                source = open_source(url, f"train{r}")
                trainer = OnlineTrainer(cfg, source, tmp / f"run-{len(report)}-{r}", progress=False)
                # Steady state: from the first batch's start (not the connect) to the last
                # batch's end (not the final partial batch's wait, delta and checkpoint).
                steps: list = []
                step = trainer.step

                def timed(messages: list, step=step, steps=steps) -> None:
                    started = time.perf_counter()
                    step(messages)
                    steps.append((started, time.perf_counter(), len(messages)))

                trainer.step = timed  # type: ignore[method-assign]
                trainer.run(max_events=events)
                full = [s for s in steps if s[2] == cfg.data.batch_size]
                trained.append(
                    sum(s[2] for s in full[1:]) / (full[-1][1] - full[0][1])
                )
                source.close()
                read.append(events / _read_all(url, f"read{r}", events))
            report[name] = {
                "train_events_per_s": statistics.median(trained),
                "read_events_per_s": statistics.median(read),
            }
            print(name, report[name], file=sys.stderr, flush=True)
        shared = []
        spawn = multiprocessing.get_context("spawn")  # never fork librdkafka's threads
        counter = ck.Consumer({"bootstrap.servers": brokers, "group.id": "count"})
        sizes = [
            counter.get_watermark_offsets(ck.TopicPartition("events", p), timeout=10)[1]
            for p in range(4)
        ]
        counter.close()
        for _ in range(repeats):
            queue = spawn.Queue()
            procs = [
                spawn.Process(
                    target=_read_partitions,
                    args=(brokers, "events", parts, sum(sizes[p] for p in parts), queue),
                )
                for parts in ([0, 1], [2, 3])
            ]
            for proc in procs:
                proc.start()
            seconds = max(queue.get(timeout=180) for _ in procs)
            for proc in procs:
                proc.join()
            shared.append(events / seconds)
        report["kafka, 2 readers × 2 partitions"] = {"read_events_per_s": statistics.median(shared)}
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
    return report


if __name__ == "__main__":
    main()
