"""`streamrec export --format onnx`: how far onnxruntime's scores are from the model's, and how
fast each scores the same raw rows.

    .venv/bin/python benchmarks/onnx_export.py --json [--workdir runs/bench-onnx]

For the ML-100k DeepFM and Criteo DLRM / DCNv2 examples (one epoch each, trained once per
--workdir): export, then over the first --rows validation rows (unseen ids included) report the
max |onnxruntime − streamrec| and, per batch size, rows/s of streamrec (Arrow rows → encode →
predict, as `streamrec serve` does per batch) and of onnxruntime (the same rows as the graph's
inputs → scores), medians of --repeats. One thread each (a serving worker's budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow as pa
import torch

from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits
from streamrec.models.persistence import load_model
from streamrec.onnx_export import export_onnx, onnx_inputs
from streamrec.train.job import run_training

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ["ml100k_deepfm", "criteo_dlrm", "criteo_dcnv2"]


def rows_per_s(score, batches: list, repeats: int) -> float:
    score(batches[0])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for b in batches:
            score(b)
        times.append(time.perf_counter() - started)
    return sum(n for _, n in batches) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-onnx"))
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for example in EXAMPLES:
        run = args.workdir / example
        if not (run / "model").exists():
            cfg = load_config(REPO / "examples" / f"{example}.yaml")
            cfg.train.epochs = 1
            run_training(cfg, run, progress=False)
        report = export_onnx(run, args.workdir / "repo")
        loaded = load_model(run)
        model, schema, kinds = loaded.model.eval(), loaded.config.schema, loaded.input_kinds
        splits = open_splits(loaded.config.data, DeadLetter(None), dict(kinds))
        source = splits.valid or splits.train
        table = pa.Table.from_batches(list(source())).slice(0, args.rows)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(report["model"], options,
                                               providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}

        def feeds(t: pa.Table, wanted=wanted, kinds=kinds) -> dict:
            return {k: v for k, v in onnx_inputs(t, kinds).items() if k in wanted}

        with torch.inference_mode():
            ours = model.predict(schema.encode(table, with_labels=False)).numpy()
        theirs = np.stack(session.run(None, feeds(table)), axis=1)
        row = {"rows": table.num_rows, "max_abs_difference": float(np.abs(ours - theirs).max()),
               "graph_bytes": report["bytes"], "throughput": {}}
        for size in args.batch_sizes:
            slices = [table.slice(i, size) for i in range(0, table.num_rows, size)]

            def streamrec_score(item, model=model, schema=schema) -> None:
                with torch.inference_mode():
                    model.predict(schema.encode(item[0], with_labels=False))

            def onnx_score(item, session=session) -> None:
                session.run(None, item[0])

            ours_rate = rows_per_s(streamrec_score, [(s, s.num_rows) for s in slices],
                                   args.repeats)
            onnx_rate = rows_per_s(onnx_score, [(feeds(s), s.num_rows) for s in slices],
                                   args.repeats)
            row["throughput"][size] = {"streamrec_rows_per_s": ours_rate,
                                       "onnxruntime_rows_per_s": onnx_rate,
                                       "streamrec_over_onnxruntime": ours_rate / onnx_rate}
        results[example] = row
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for example, row in results.items():
            print(example, row)


if __name__ == "__main__":
    main()
