"""Frequency-adaptive embedding widths (`rare_dim`): the memory they save and what they cost in
AUC, next to the same tables at full width in the same run.

    .venv/bin/python benchmarks/adaptive_dim.py --json [--seeds 0 1 2] [--ids 20000000]

Quality: each dataset's example config (criteo: DCN-v2, ml-100k / ml-small: DeepFM; dim 16)
trained as is and with `default_table.rare_dim` 4 and 8 (`promote_after` 10, the default); test
AUC and the live rows' weights + optimizer state after training (map, metadata and sketches
apart).

Scale: `--ids` distinct ids, each occurring a Zipf-like number of times (id i: ⌈C / (i + 1)⌉,
C = ids / 20: 0.6% of ids reach 10 occurrences), shuffled and looked up for training in
batches of 2^20 — by one dim-16 table (rowwise Adagrad) and by the two parts of a rare_dim 4
one, whose frequent part's sketch is sized to the ids (sketch_width ≈ ids, rounded to a power
of two). Bytes per id and ingest time of each.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamrec.config import load_config
from streamrec.embedding.adaptive_dim import FREQUENT, build_tables
from streamrec.models.persistence import load_model
from streamrec.table_config import TableConfig
from streamrec.train.job import run_training

DATASETS = {
    "criteo": "examples/criteo_dcnv2.yaml",
    "ml-100k": "examples/ml100k_deepfm.yaml",
    "ml-small": "examples/mlsmall_deepfm.yaml",
}
RARE_DIMS = (None, 8, 4)


def quality(dataset: str, rare_dim: int | None, seed: int, tmp: Path) -> dict:
    cfg = load_config(DATASETS[dataset])
    cfg.train = cfg.train.model_copy(update={"seed": seed})
    cfg.default_table = cfg.default_table.model_copy(update={"rare_dim": rare_dim})
    run = tmp / f"{dataset}-{rare_dim}-{seed}"
    result, model_dir = run_training(cfg, run, progress=False)
    tables = {n: t for n, t in load_model(model_dir).model.dynamic_tables().items()
              if not n.endswith("@linear")}
    rows = sum(len(t) for n, t in tables.items() if not n.endswith(FREQUENT))
    promoted = sum(len(t) for n, t in tables.items() if n.endswith(FREQUENT))
    return {
        "auc": result.metrics["label"]["auc"],
        # live rows' weights + optimizer state (allocation rounds small tables up to a chunk)
        "row_bytes": sum(len(t) * 4 * (t.dim + t._state.width) for t in tables.values()),
        "ids": rows,
        "promoted": promoted if rare_dim else rows,
    }


def _stream(ids: int, seed: int = 0) -> np.ndarray:
    scale = max(1, ids // 20)
    counts = np.ceil(scale / np.arange(1, ids + 1)).astype(np.int64)
    stream = np.repeat(np.arange(ids, dtype=np.int64), counts)
    np.random.default_rng(seed).shuffle(stream)
    return stream


def scale(ids: int, batch: int = 1 << 20) -> dict:
    stream = _stream(ids)
    sketch = 1 << max(20, (ids - 1).bit_length())
    full = TableConfig(dim=16, optimizer="rowwise_adagrad", sketch_width=sketch)
    out = {"ids": ids, "lookups": int(stream.size)}
    warm = build_tables({"t": full.model_copy(update={"rare_dim": 4, "sketch_width": 64})})
    for table in warm.values():  # compile the kernels outside the timings
        table.lookup(torch.from_numpy(stream[:1000]), now=0)
    for label, settings in (("full", full), ("rare_dim_4", full.model_copy(
            update={"rare_dim": 4}))):
        gc.collect()
        tables = build_tables({"t": settings})
        t0 = time.perf_counter()
        for lo in range(0, stream.size, batch):
            ids_batch = torch.from_numpy(stream[lo: lo + batch])
            for table in tables.values():
                table.lookup(ids_batch, now=0)
        seconds = time.perf_counter() - t0
        memory = {n: t.memory_bytes() for n, t in tables.items()}
        rows = sum(m["weights"] + m["optimizer_state"] for m in memory.values())
        total = sum(sum(m.values()) for m in memory.values())
        sketches = sum(t._sketch.nbytes for t in tables.values())
        out[label] = {
            "seconds": seconds,
            "ns_per_lookup": 1e9 * seconds / stream.size,
            "row_bytes_per_id": rows / ids,
            "bytes_per_id": (total - sketches) / ids,
            "sketch_bytes": sketches,
            "promoted": len(tables["t" + FREQUENT]) if "t" + FREQUENT in tables else ids,
        }
        del tables
    out["memory_ratio"] = out["rare_dim_4"]["bytes_per_id"] / out["full"]["bytes_per_id"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--ids", type=int, default=20_000_000, help="0: skip the scale run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report: dict = {"quality": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for rare_dim in RARE_DIMS:
                runs = []
                for seed in args.seeds:
                    print(f"{dataset} rare_dim {rare_dim} seed {seed} …", file=sys.stderr)
                    runs.append(quality(dataset, rare_dim, seed, Path(tmp)))
                report["quality"].setdefault(dataset, {})[str(rare_dim)] = {
                    "auc_mean": statistics.mean(r["auc"] for r in runs),
                    "aucs": [r["auc"] for r in runs],
                    "row_bytes": runs[0]["row_bytes"],
                    "ids": runs[0]["ids"],
                    "promoted": runs[0]["promoted"],
                }
    if args.ids:
        print(f"{args.ids:,} ids …", file=sys.stderr)
        report["scale"] = scale(args.ids)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for dataset, by_dim in report["quality"].items():
        base = by_dim["None"]
        for rare_dim, r in by_dim.items():
            print(f"{dataset:9s} rare_dim {rare_dim:4s} AUC {r['auc_mean']:.4f} "
                  f"({r['auc_mean'] - base['auc_mean']:+.4f}) row bytes {r['row_bytes']:,} "
                  f"({r['row_bytes'] / base['row_bytes']:.2f}×), promoted {r['promoted']:,} "
                  f"of {r['ids']:,}")
    if "scale" in report:
        print(json.dumps(report["scale"], indent=2))


if __name__ == "__main__":
    main()
