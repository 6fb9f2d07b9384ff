"""Criteo TSV → Batch: streamrec's reader next to pandas.read_csv + per-column hashing.

    python benchmarks/ingest.py --json [--copies 30]

The 7,200-row Criteo sample is repeated `--copies` times into a temp file, then both paths turn
it into training tensors (labels, log1p dense features, 26 hashed sparse id columns), alternating
A B A B; the report gives rows/s of each and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xxhash

from streamrec.data.loader import BatchLoader
from streamrec.data.records import CRITEO_COLUMNS, CRITEO_DENSE, CRITEO_SPARSE, read_criteo
from streamrec.schema import DenseFeature, EmbeddingFeature, Label, Schema

SCHEMA = Schema(
    labels=[Label(name="label")],
    dense=[DenseFeature(name=c, transform="log1p") for c in CRITEO_DENSE],
    embeddings=[EmbeddingFeature(name=c) for c in CRITEO_SPARSE],
)


def ours(path: Path) -> int:
    loader = BatchLoader(lambda: read_criteo(path), SCHEMA, batch_size=65536, prefetch=0)
    return sum(len(b) for b in loader)


def pandas_path(path: Path) -> int:
    df = pd.read_csv(path, sep="\t", header=None, names=CRITEO_COLUMNS)
    labels = torch.tensor(df["label"].to_numpy(np.float32))
    dense = df[CRITEO_DENSE].to_numpy(np.float64)
    dense = np.sign(dense) * np.log1p(np.abs(dense))
    dense = torch.tensor(np.nan_to_num(dense).astype(np.float32))

    def hash_column(values: pd.Series) -> torch.Tensor:
        hashed = values.fillna("").map(lambda v: xxhash.xxh64_intdigest(v.encode()))
        return torch.tensor(hashed.to_numpy(np.uint64).view(np.int64))

    sparse = {c: hash_column(df[c]) for c in CRITEO_SPARSE}
    assert dense.shape[0] == labels.shape[0] == len(sparse["C1"])
    return len(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("STREAMREC_TEST_DATA", "../shared/data"))
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    src = Path(args.data) / "criteo" / "train.tsv"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "criteo.tsv"
        text = src.read_bytes()
        path.write_bytes(text * args.copies)
        rows = ours(path)
        assert rows == pandas_path(path)
        a, b = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours(path)
            a.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pandas_path(path)
            b.append(time.perf_counter() - t0)
    ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
    report = {
        "rows": rows,
        "ours_rows_per_s": rows / statistics.median(a),
        "pandas_rows_per_s": rows / statistics.median(b),
        "speedup": ratio,
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
