"""Fewer-bit rows in served models: what int16 / int8 rows cost in AUC, save in bytes, and cost
(or save) in read time — ours next to PyTorch's FBGEMM 8-bit row-wise embedding bag.

    .venv/bin/python benchmarks/row_precision.py --json [--seeds 0 1 2] [--rows 2000000]

Quality: each dataset's example config (criteo: DCN-v2, ml-100k and ml-small: DeepFM) is trained
once per seed; `export_for_serving` writes fp32, int16 and int8 copies of that one model, and
each copy is evaluated on the test split — so a difference is the encoding's alone.

Read speed: one table of `--rows` rows of dim 16; the same random rows (a batch of 65,536 ids,
one per bag) are read by
  ours fp32   `TableGroup.gather` (the serving lookup's copy, rows already resolved)
  ours int8   the same, de-quantising each row as it is read
  torch fp32  `F.embedding_bag` (sum of one row per bag)
  torch int8  `torch.ops.quantized.embedding_bag_byte_rowwise_offsets` (FBGEMM's 8-bit row-wise
              kernel: the same encoding, uint8 + fp32 scale and bias per row)
alternating, median of `--repeats` runs each.

Serving: the ML-100k model's fp32 and int8 copies score the same 100-candidate request
(`Snapshot.predict`), alternating, median of 200 calls each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from streamrec.api import evaluate
from streamrec.config import load_config
from streamrec.embedding import DynamicTable
from streamrec.embedding.grouped import Resolved, TableGroup
from streamrec.embedding.quantized_rows import dequantize, quantize
from streamrec.models.persistence import export_for_serving
from streamrec.serving.snapshot import Snapshot
from streamrec.train.job import run_training

DATASETS = {
    "criteo": "examples/criteo_dcnv2.yaml",
    "ml-100k": "examples/ml100k_deepfm.yaml",
    "ml-small": "examples/mlsmall_deepfm.yaml",
}
PRECISIONS = ("fp32", "int16", "int8")


def quality(dataset: str, seed: int, tmp: Path) -> dict:
    cfg = load_config(DATASETS[dataset])
    cfg.train = cfg.train.model_copy(update={"seed": seed})
    run = tmp / f"{dataset}-{seed}"
    run_training(cfg, run, progress=False)
    out = {}
    for precision in PRECISIONS:
        copy = tmp / f"{dataset}-{seed}-{precision}"
        report = export_for_serving(run, copy, row_precision=precision)
        m = evaluate(copy)["metrics"]["label"]
        out[precision] = {
            "auc": m["auc"], "logloss": m["logloss"],
            "weight_bytes": report["weight_bytes_after"],
            "table_bytes": report["table_bytes_after"],
            "files_bytes": sum(f.stat().st_size for f in (copy / "tables").iterdir()),
        }
    return out


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_speed(rows: int, repeats: int, batch: int = 65536, dim: int = 16) -> dict:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (rows, dim)).astype(np.float32)
    fids = np.arange(rows, dtype=np.int64)
    exact = DynamicTable(dim=dim, name="t")
    exact.upsert(fids, weights)
    small = DynamicTable(dim=dim, name="t")
    small.upsert(fids, weights)
    small.set_row_precision("int8")
    wanted = rng.integers(0, rows, batch)
    ours = {}
    for name, table in (("ours_fp32", exact), ("ours_int8", small)):
        group = TableGroup([table])
        stored = table.resolve(wanted, insert=False)
        resolved = Resolved(np.zeros(batch, np.int64), wanted, stored, np.arange(batch))
        ours[name] = (group, resolved)
    dense = torch.from_numpy(weights)
    packed = torch.ops.quantized.embedding_bag_byte_prepack(dense)
    index = torch.from_numpy(wanted)
    offsets = torch.arange(batch)
    runs = {
        "ours_fp32": lambda: ours["ours_fp32"][0].gather(ours["ours_fp32"][1]),
        "ours_int8": lambda: ours["ours_int8"][0].gather(ours["ours_int8"][1]),
        "torch_fp32": lambda: torch.nn.functional.embedding_bag(
            index, dense, offsets, mode="sum"),
        "torch_int8": lambda: torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            packed, index, offsets, False, 0, False, None, None, False),
    }
    with torch.inference_mode():
        got = {name: fn() for name, fn in runs.items()}  # warm up (numba compiles)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(_median_seconds(fn, 3))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    codes, params = quantize(weights, "int8")
    ours_error = float(np.abs(dequantize(codes, params) - weights).max())
    fbgemm_error = float((got["torch_int8"] - dense[index]).abs().max())
    return {
        "rows": rows, "batch": batch, "dim": dim,
        "ns_per_row": {k: 1e9 * v / batch for k, v in seconds.items()},
        "int8_vs_torch_int8": seconds["torch_int8"] / seconds["ours_int8"],
        "int8_vs_ours_fp32": seconds["ours_fp32"] / seconds["ours_int8"],
        "fp32_vs_torch_fp32": seconds["torch_fp32"] / seconds["ours_fp32"],
        "max_error": {"ours_int8": ours_error, "fbgemm_int8": fbgemm_error},
        # Rounding ties can break the other way: a code apart at most.
        "max_gap_to_fbgemm": float((got["ours_int8"] - got["torch_int8"]).abs().max()),
        "bytes_per_row": {"fp32": 4 * dim, "int8": dim + 8, "fbgemm_int8": packed.shape[1]},
    }


def serving(tmp: Path, calls: int = 200) -> dict:
    """fp32 vs int8 copies of one ML-100k model scoring a 100-candidate request."""
    snaps = {p: Snapshot.load(tmp / f"ml-100k-0-{p}") for p in ("fp32", "int8")}
    request = pa.table({
        "user_id": [1] * 100, "age": [24] * 100, "gender": ["M"] * 100,
        "occupation": ["technician"] * 100, "zip_code": ["85711"] * 100,
        "item_id": list(range(1, 101)), "genres": [["Comedy", "Drama"]] * 100,
    })
    for snap in snaps.values():
        snap.predict(request)
    times: dict[str, list[float]] = {p: [] for p in snaps}
    for _ in range(calls):
        for p, snap in snaps.items():
            t0 = time.perf_counter()
            snap.predict(request)
            times[p].append(time.perf_counter() - t0)
    ms = {p: 1e3 * statistics.median(t) for p, t in times.items()}
    return {"ms_per_request": ms, "int8_vs_fp32": ms["fp32"] / ms["int8"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the read-speed table")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report: dict = {"quality": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                print(f"training {dataset} seed {seed} …", file=sys.stderr)
                report["quality"].setdefault(dataset, []).append(quality(dataset, seed, Path(tmp)))
        if "ml-100k" in args.datasets and 0 in args.seeds:
            report["serving"] = serving(Path(tmp))
    report["read_speed"] = read_speed(args.rows, args.repeats)
    summary = {}
    for dataset, runs in report["quality"].items():
        summary[dataset] = {
            p: {
                "auc_mean": statistics.mean(r[p]["auc"] for r in runs),
                "auc_change_mean": statistics.mean(r[p]["auc"] - r["fp32"]["auc"] for r in runs),
                "weight_bytes": runs[0][p]["weight_bytes"],
                "files_bytes": runs[0][p]["files_bytes"],
            }
            for p in PRECISIONS
        }
    report["summary"] = summary
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for dataset, by_p in summary.items():
        for p, s in by_p.items():
            print(f"{dataset:9s} {p:6s} AUC {s['auc_mean']:.4f} ({s['auc_change_mean']:+.5f}) "
                  f"weights {s['weight_bytes']:,} B, files {s['files_bytes']:,} B")
    speed = report["read_speed"]
    print("read ns/row:", {k: round(v, 2) for k, v in speed["ns_per_row"].items()})
    if "serving" in report:
        print("serving ms/request:", report["serving"]["ms_per_request"])


if __name__ == "__main__":
    main()
