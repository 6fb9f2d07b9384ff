"""Batch scoring throughput: `streamrec predict` on Criteo-shaped rows (target ≥ 250k rows/s).

    .venv/bin/python benchmarks/predict.py --json [--rows 500000] [--runs 3]

streamrec's default DeepFM (26 tables, dim 16, 13 log1p dense features, MLP 256-128; the MLP
dominates the forward: 400-400 halves throughput) is trained for one epoch
on 50k synthetic Criteo rows (Zipf ids) and saved; then a Parquet file of --rows new rows
(ids partly unseen) is scored end to end by `score_file` — read, encode (hash and look up every
id), forward, write Parquet in row order — --runs times. Reported: rows/s per run and the
median, in fp32 and with the dense layers in bf16 (`--precision bf16`), next to the model's
fp32 forward pass alone on the same rows, pre-encoded, in the same `FORWARD_ROWS` chunks (the
ceiling an fp32 scorer could reach on this machine: what is left is reading, encoding and
writing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from streamrec.config import parse_config
from streamrec.data.records import CRITEO_DENSE, CRITEO_SPARSE
from streamrec.data.synthetic import SyntheticCriteo
from streamrec.models.persistence import load_model
from streamrec.serving.batch_scoring import predict_rows, score_file
from streamrec.train.job import run_training

TARGET_ROWS_PER_S = 250_000  # issue 33


def config(train: Path) -> dict:
    return {
        "name": "predict-bench",
        "schema": {
            "labels": [{"name": "label"}],
            "dense": [{"name": c, "transform": "log1p"} for c in CRITEO_DENSE],
            "embeddings": [{"name": c, "missing": "empty"} for c in CRITEO_SPARSE],
        },
        "default_table": {"dim": 16, "optimizer": "rowwise_adagrad", "lr": 0.05},
        "data": {"format": "parquet", "train": str(train), "batch_size": 2048},
        "model": {"name": "deepfm"},
        "train": {"epochs": 1, "seed": 0},
    }


def write_rows(path: Path, rows: int, seed: int) -> None:
    batches = SyntheticCriteo(seed=seed).record_batches(rows, 65536)
    first = next(batches)
    with pq.ParquetWriter(path, first.schema) as writer:
        writer.write_batch(first)
        for b in batches:
            writer.write_batch(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_rows(tmp / "train.parquet", 50_000, seed=0)
        write_rows(tmp / "score.parquet", args.rows, seed=1)
        _, model_dir = run_training(parse_config(config(tmp / "train.parquet")), tmp / "run",
                                    progress=False)
        runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.runs):  # alternating, so both see the same machine
            for precision in runs:
                report = score_file(model_dir, tmp / "score.parquet",
                                    tmp / f"scores-{precision}.parquet", precision=precision)
                runs[precision].append(report["rows_per_s"])
        fp32, bf16 = (pq.read_table(tmp / f"scores-{p}.parquet")["score"].to_numpy()
                      for p in ("fp32", "bf16"))
        assert fp32.size == args.rows
        bf16_error = float(np.abs(fp32 - bf16).max())
        loaded = load_model(model_dir)
        model, schema = loaded.model.eval(), loaded.config.schema
        table = pq.read_table(tmp / "score.parquet")
        batches = [schema.encode(b, with_labels=False) for b in table.to_batches(65536)]
        forward = []
        for _ in range(args.runs):
            started = time.perf_counter()
            for b in batches:
                predict_rows(model, b)  # FORWARD_ROWS a call, as score_file
            forward.append(args.rows / (time.perf_counter() - started))
    medians = {p: statistics.median(r) for p, r in runs.items()}
    result = {
        "rows": args.rows,
        **{f"predict_{p}_rows_per_s": [round(x) for x in r] for p, r in runs.items()},
        **{f"predict_{p}_median_rows_per_s": round(m) for p, m in medians.items()},
        "forward_only_fp32_median_rows_per_s": round(statistics.median(forward)),
        "bf16_max_abs_score_difference": round(bf16_error, 5),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "met_fp32": medians["fp32"] >= TARGET_ROWS_PER_S,
        "met_bf16": medians["bf16"] >= TARGET_ROWS_PER_S,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    pa.set_cpu_count(2)
    main()
