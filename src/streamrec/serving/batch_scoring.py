"""Batch scoring: one calibrated score per input row of a file, for offline use of a model.

    streamrec predict MODEL_DIR --data rows.csv --out scores.parquet [--id-column request_id]

Rows are read with the column kinds the model was trained on (an id column of digits stays a
string if it was one in training: the same row gets the same score from any file), encoded,
scored in blocks and written in input order — one column per task (`score` for a single task,
`score_<task>` otherwise), after the id column when one is named. The output is written to a
temporary file and renamed into place: a killed run leaves no half file under the name.
A model in eval mode admits nothing: ids never seen in training read their table's default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from streamrec.batch import Batch
from streamrec.config import JobConfig
from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.formats import guess_format, known_row_count, read_records
from streamrec.models.onednn_linear import repeated_shapes
from streamrec.models.persistence import load_model
from streamrec.store.atomic import temp_sibling

OUTPUT_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv")

FORWARD_ROWS = 8192
"""Rows per forward call. Blocks are read 65,536 rows at a time (Arrow and Parquet like large
blocks), but a forward over that many rows allocates activations of a hundred MB and more
(DeepFM's first-layer input alone: 65,536 × 429 floats, 112 MB). The allocator hands an
allocation that large back to the kernel when it is freed, so every call pays fresh pages'
faults, which cost more than the matmuls: the default DeepFM's forward ran 158k rows/s at
65,536 rows a call, 256k at 8,192 and 258k at 4,096 (`benchmarks/predict.py`'s model)."""


def _writer(out: Path, path: Path, schema: pa.Schema) -> Any:
    """A writer of `out`'s format (by its suffix) that writes to `path`."""
    if out.suffix in (".parquet", ".pq"):
        return pq.ParquetWriter(path, schema)
    options = pacsv.WriteOptions(delimiter="\t" if out.suffix == ".tsv" else ",")
    return pacsv.CSVWriter(path, schema, write_options=options)


def _read_ahead(
    blocks: Iterator[pa.RecordBatch], encode: Callable[[pa.RecordBatch], Batch]
) -> Iterator[tuple[pa.RecordBatch, Batch]]:
    """(block, encoded block) pairs, the next one read and encoded on a worker thread while
    this one is scored: Arrow reading and the numba hashing release the GIL."""

    def load() -> tuple[pa.RecordBatch, Batch] | None:
        block = next(blocks, None)
        return None if block is None else (block, encode(block))

    with closing(blocks), ThreadPoolExecutor(1, thread_name_prefix="streamrec-read") as pool:
        pending = pool.submit(load)
        while (item := pending.result()) is not None:
            pending = pool.submit(load)
            yield item


def _format(data: str | Path, config: JobConfig) -> str:
    """The file's format by its name, else the one the model was trained from."""
    try:
        return guess_format(data)
    except DataError:
        return config.data.format


def score_file(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: str | None = None,
    id_column: str | None = None,
    block_rows: int = 65536,
    dead: DeadLetter | None = None,
    precision: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every row of `data` into `out`; → {rows, seconds, rows_per_s, output}. With
    `progress`, a rows-scored bar on a terminal (never in a log).

    `precision`: "fp32", or "bf16" (the dense layers under bf16 autocast: ~1.35× the rows/s on
    a CPU with bf16 units, scores within ~1e-3); default: the model's `train.precision`."""
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"{out}: write scores to a {' / '.join(OUTPUT_SUFFIXES)} file")
    loaded = load_model(model_dir)
    model, schema = loaded.model.eval(), loaded.config.schema
    kinds = loaded.input_kinds
    tasks = schema.task_names or ["label"]
    names = ["score"] if len(tasks) == 1 else [f"score_{t}" for t in tasks]
    bf16 = (precision or loaded.config.train.precision) == "bf16"
    tmp = temp_sibling(out)
    writer = None
    rows = 0
    started = time.perf_counter()
    fmt = fmt or _format(data, loaded.config)
    bar = tqdm(desc="scoring", unit=" rows", total=known_row_count(data, fmt),
               disable=None if progress else True, leave=False)
    try:
        fields = loaded.config.data.fields
        blocks = read_records(data, fmt, dead, block_rows, kinds, fields)
        for batch, encoded in _read_ahead(blocks, lambda b: schema.encode(b, with_labels=False)):
            if id_column is not None and id_column not in batch.schema.names:
                raise DataError(f"{data}: no column {id_column!r} to pass through")
            scores = predict_rows(model, encoded, bf16)
            columns = {} if id_column is None else {id_column: batch.column(id_column)}
            columns.update({n: pa.array(scores[:, i], pa.float32()) for i, n in enumerate(names)})
            table = pa.table(columns)
            if writer is None:
                writer = _writer(out, tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
            bar.update(table.num_rows)
        if writer is None:
            raise DataError(f"{data}: no rows to score")
        writer.close()
        writer = None
        tmp.replace(out)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9),
            "precision": "bf16" if bf16 else "fp32", "output": str(out)}


def predict_rows(model: torch.nn.Module, batch: Batch, bf16: bool = False) -> np.ndarray:
    """Calibrated scores float32 [batch rows, tasks] of a model in eval mode, `FORWARD_ROWS`
    rows a call (a row's score does not depend on the rows beside it); `bf16`: the dense layers
    under bf16 autocast."""
    n = batch.size
    chunks = [batch] if n <= FORWARD_ROWS else [
        batch.slice(lo, min(lo + FORWARD_ROWS, n)) for lo in range(0, n, FORWARD_ROWS)
    ]
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16), \
            repeated_shapes():  # the chunks are one shape: oneDNN's kernels are built once
        parts = [model.predict(chunk).float() for chunk in chunks]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).numpy()
