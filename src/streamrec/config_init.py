"""A starting job config from a data file (`streamrec config init DATA`): the first step with
one's own data, instead of a YAML written by hand from the reference.

It reads a sample of the file (the first `sample_rows` rows, through the same readers training
uses), decides per column from its type and distinct count what it most likely is, and writes
a YAML whose every line says why, for the user to edit. The decisions are deliberately plain
and stated, not tuned: a guess that is wrong should be easy to see and change.

    label     --label, else a column named like a label (label, click, target, y, …);
              0/1 or true/false as is, −1/+1 mapped, a wider numeric range thresholded at
              its upper quartile (say so), two strings: the rarer is the positive
    ids       strings, lists, and integers that look like ids (name ends in `id`) or take
              at most 1,000 values → an embedding table each
    numbers   floats, and integers with more values → dense (log1p if never negative,
              else standardize)
    time      an integer column named timestamp / time / ts → schema.timestamp
    skipped   columns with one value, or missing on every row

The written config is loaded and validated before it is written, so it trains as is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from streamrec.config import ConfigError, parse_config
from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.formats import guess_format, read_records
from streamrec.schema import Label

LABEL_NAMES = ("label", "click", "clicked", "is_click", "target", "y", "conversion", "rating")
TIME_NAMES = ("timestamp", "time", "ts", "event_time")
ID_CARDINALITY = 1000  # an integer column with at most this many values is read as ids
_ID_NAME = re.compile(r"(^|_)id$|Id$|ID$")


def _sample(path: str, fmt: str | None, rows: int) -> pa.Table:
    batches, have = [], 0
    for batch in read_records(path, fmt, DeadLetter()):
        batches.append(batch)
        have += batch.num_rows
        if have >= rows:
            break
    if not batches:
        raise DataError(f"{path}: no rows to look at")
    return pa.Table.from_batches(batches).slice(0, rows)


def _label_rule(name: str, column: pa.ChunkedArray) -> tuple[dict[str, Any], str]:
    """(the label entry, why) for a label column's sampled values."""
    values = column.drop_null()
    if pa.types.is_boolean(column.type):
        return {"name": name}, "true/false"
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        counts = pc.value_counts(values).to_pylist()
        if len(counts) != 2:
            raise DataError(
                f"label column {name!r} holds {len(counts)} distinct strings; a label needs "
                "two (give `positive: [...]` in the config by hand)"
            )
        rarer = min(counts, key=lambda c: c["counts"])["values"]
        return {"name": name, "positive": [rarer]}, f"two values: {rarer!r} (the rarer) is 1"
    numbers = np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False))
    numbers = numbers[np.isfinite(numbers)]  # a NaN cell is a missing label, not a value
    if numbers.size == 0:
        raise DataError(f"label column {name!r} has no numeric value in the sampled rows")
    distinct = set(np.unique(numbers).tolist())
    if distinct <= {0.0, 1.0}:
        return {"name": name}, "0/1"
    if distinct <= {-1.0, 1.0}:
        return {"name": name, "values": {-1: 0, 1: 1}}, "-1/+1, mapped to 0/1"
    cut = float(np.quantile(numbers, 0.75))
    cut = cut if cut > numbers.min() else float(np.unique(numbers)[1])
    return (
        {"name": name, "threshold": cut},
        f"numeric ({numbers.min():g} to {numbers.max():g}): 1 where >= {cut:g}, the upper "
        "quartile — EDIT to what counts as a positive",
    )


def _column_role(name: str, column: pa.ChunkedArray) -> tuple[str, dict, str]:
    """(role, entry, why): role is embedding, dense, timestamp or skip."""
    t = column.type
    present = column.drop_null()
    if len(present) == 0:
        return "skip", {}, "missing on every sampled row"
    values = pc.list_flatten(present) if pa.types.is_list(t) else present
    distinct = len(pc.unique(values))
    if distinct <= 1 and not pa.types.is_list(t):
        return "skip", {}, "one value on every sampled row"
    if pa.types.is_list(t) and pa.types.is_floating(t.value_type):
        return "skip", {}, "a list of numbers that weights no id column"
    if pa.types.is_list(t):
        return "embedding", {"name": name, "pooling": "mean"}, f"lists, {distinct:,} ids: pooled"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "embedding", {"name": name}, f"strings, {distinct:,} values: hashed ids"
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if name.lower() in TIME_NAMES:
            return "timestamp", {}, "event time (seconds)"
        if _ID_NAME.search(name) or distinct <= ID_CARDINALITY:
            return "embedding", {"name": name}, f"integers, {distinct:,} values: ids"
    low = pc.min(values).as_py()
    transform = "log1p" if low is not None and low >= 0 else "standardize"
    return (
        "dense",
        {"name": name, "transform": transform},
        f"numbers, {distinct:,} values{', never negative' if transform == 'log1p' else ''}",
    )


def _batch_size(rows: int, sample_rows: int) -> tuple[int, str]:
    """1024 rows per step, fewer for a small file so that an epoch is at least ~50 steps
    (a dense optimizer needs steps, not only rows)."""
    if rows >= sample_rows:
        return 1024, "rows per step"
    batch = int(min(1024, max(64, 2 ** np.floor(np.log2(max(rows, 1) / 50)))))
    return batch, f"a small file ({rows:,} rows): ~{rows // batch} steps per epoch"


def _decides(column: pa.ChunkedArray, labels: np.ndarray) -> bool:
    """Whether a numeric column separates the labels perfectly (every positive above every
    negative, or below): the label was made from it (a rating beside `rating >= 4`)."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return False
    x = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    keep = ~np.isnan(x) & ~np.isnan(labels)
    x, y = x[keep], labels[keep]
    if not (y == 1).any() or not (y == 0).any():
        return False
    pos, neg = x[y == 1], x[y == 0]
    return bool(pos.min() > neg.max() or pos.max() < neg.min())


def starting_config(
    data: str,
    fmt: str | None = None,
    label: str | None = None,
    valid: str | None = None,
    config_path: Path | None = None,
    sample_rows: int = 100_000,
) -> str:
    """The commented YAML of a job that trains on `data` as is; paths relative to the folder
    of `config_path` (where it will be written). DataError names what could not be decided."""
    if valid is not None:  # checked now, not at the first epoch's end
        next(iter(read_records(valid, fmt, DeadLetter())), None)
    table = _sample(data, fmt, sample_rows)
    names = table.column_names
    if label is None:
        by_lower = {n.lower(): n for n in names}
        label = next((by_lower[c] for c in LABEL_NAMES if c in by_lower), None)
        if label is None:
            raise DataError(
                f"{data}: no column looks like a label ({', '.join(LABEL_NAMES)}): name it "
                f"with --label COLUMN (columns: {', '.join(names[:30])})"
            )
    elif label not in names:
        raise DataError(f"{data}: no column {label!r} (columns: {', '.join(names[:30])})")
    label_entry, label_why = _label_rule(label, table.column(label))
    labels, bad = Label(**label_entry).to_binary(table.column(label).combine_chunks())
    labels = np.where(bad, np.nan, labels)
    roles: dict[str, list[tuple[dict, str]]] = {"embedding": [], "dense": []}
    skipped, timestamp = [], None
    weights = {  # libsvm-style `<field>_w`: the per-id values its field pools with
        n[:-2]: n for n in names
        if n.endswith("_w") and n[:-2] in names and pa.types.is_list(table.schema.field(n).type)
    }
    for name in names:
        if name == label or name in weights.values():
            continue
        role, entry, why = _column_role(name, table.column(name))
        if role in ("dense", "embedding") and _decides(table.column(name), labels):
            role, why = "skip", "it decides the label on every sampled row: a leak"
        if role == "embedding" and name in weights:
            entry = {**entry, "weights": weights[name], "pooling": "sum"}
            why += f", weighted by {weights[name]}"
        if role == "skip":
            skipped.append(f"{name} ({why})")
        elif role == "timestamp" and timestamp is None:
            timestamp = name
        elif role == "timestamp":
            skipped.append(f"{name} (a second time column)")
        else:
            roles[role].append((entry, why))
    if not roles["embedding"] and not roles["dense"]:
        raise DataError(f"{data}: no column besides the label {label!r} to learn from")
    config_path = config_path or Path(f"{Path(data).stem}.yaml")
    base = config_path.resolve().parent
    train_path = _relative(data, base)
    per_user = valid is None and timestamp == "timestamp" and "user_id" in names
    lines = [
        f"# A starting config for {data}, from its first {table.num_rows:,} rows",
        "# (`streamrec config init`). Every choice below says why: edit what is wrong, then",
        f"#   streamrec train {config_path} --out runs/{Path(data).stem}",
        "# Every key: docs/config.md (or `streamrec config docs`).",
        f"name: {Path(data).stem}",
        "schema:",
        f"  labels: [{_flow(label_entry)}]   # {label_why}",
    ]
    if timestamp:
        lines.append(f"  timestamp: {timestamp}   # event time in seconds (TTL, splits)")
    if "user_id" in names and any(e["name"] == "user_id" for e, _ in roles["embedding"]):
        lines.append("  group_id: user_id   # GAUC: AUC within each user's rows")
    for section in ("embeddings", "dense"):
        entries = roles["embedding" if section == "embeddings" else "dense"]
        if entries:
            lines.append(f"  {section}:")
            lines += [f"    - {_flow(e)}   # {why}" for e, why in entries]
    if skipped:
        lines.append(f"  # not used: {'; '.join(skipped)}")
    lines += [
        "# admit_min_count: an id seen once cannot generalise: it reads zeros, is not stored",
        "default_table: {dim: 16, optimizer: adagrad, lr: 0.05, init_scale: 0.01, "
        "admit_min_count: 2}",
        "data:",
    ]
    if fmt:
        lines.append(f"  format: {fmt}")
    else:
        lines.append(f"  format: {guess_format(data)}")
    lines.append(f"  train: {train_path}")
    if (fmt or guess_format(data)) in ("libsvm", "libfm"):
        lines.append("  # fields: {name: [first, end)}   # per-field tables (docs/config.md)")
    if valid is not None:
        lines.append(f"  valid: [{_relative(valid, base)}]")
    elif per_user:
        lines += [
            "  split: per_user_time   # each user's last 20% of events by time validate",
            "  test_fraction: 0.2",
        ]
    else:
        lines.append("  # valid: [FILE]   # add validation data to get metrics and the best epoch")
    batch, batch_why = _batch_size(table.num_rows, sample_rows)
    lines += [
        f"  batch_size: {batch}   # {batch_why}",
        "  shuffle_rows: 1000000   # shuffle within blocks each epoch (logs come in bursts)",
        "# DCN-v2 crosses every pair of fields without a table per pair; deepfm, wide_deep,",
        "# dlrm, fm, lr … are one word away (docs/config.md, ModelConfig)",
        "model: {name: dcnv2, params: {cross_layers: 2, hidden: [256, 128]}}",
        "train: {epochs: 2, seed: 0, dense_optimizer: adam, dense_lr: 0.001}"
        + ("   # the best epoch is kept" if valid is not None or per_user else ""),
        "",
    ]
    text = "\n".join(lines)
    _check(text, data)
    return text


def _relative(path: str, base: Path) -> str:
    """`path` as the config will name it: relative to the config's folder when that is near
    (at most two levels up), else absolute."""
    target = Path(path).resolve()
    relative = os.path.relpath(target, base.resolve())
    return relative if not relative.startswith("../../..") else str(target)


def _flow(entry: dict[str, Any]) -> str:
    """A YAML flow mapping: {name: x, transform: log1p}."""
    return yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=200).strip()


def _check(text: str, data: str) -> None:
    try:
        parse_config(yaml.safe_load(text))
    except (ConfigError, ValueError) as e:  # a bug here, not the user's: say so
        raise DataError(f"{data}: the config written for it does not validate: {e}") from e
