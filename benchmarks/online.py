"""Online learning pays: ml-latest-small in time order, a frozen batch model vs the same model
trained online over the second half (Monolith's result), plus online throughput and latency.

    python benchmarks/online.py --json

1. Train DeepFM in batch (1 epoch) on the first half of the log by time; save it.
2. Frozen: score the second half with that model (progressive AUC = plain AUC, it never learns).
3. Online: start from the same saved model and replay the second half through the online
   trainer (predict first, then learn; a delta every `sync_interval_seconds: 5`), reading from a
   local stream that a producer thread fills at --rate events/s.
Reports progressive AUC of both, events/s of the online trainer and event → delta seconds.
"""

from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
