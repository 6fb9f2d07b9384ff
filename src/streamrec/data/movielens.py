"""MovieLens-100k and MovieLens latest-small as CTR tables and time-ordered interaction logs.

Both loaders return one Arrow table sorted by (timestamp, user_id, item_id) — the interaction
log in time order — with columns named after the source:

  user_id int64, item_id int64, rating float32, timestamp int64 (seconds),
  genres list<string>, label int8 (rating >= 4)
  + ml-100k only: age int64, gender, occupation, zip_code (strings)

Where ML-100k comes from, in order: an explicit path (a folder holding the recbole-format files
`ml-100k.inter/.user/.item`), the cache folder (`$STREAMREC_CACHE` or `~/.cache/streamrec`),
then the PyPI wheel `recbole==1.2.1`, which ships those files and is fetched with `pip download`
(no recbole install) and unpacked into the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from streamrec.data.errors import DataError
from streamrec.data.records import check_readable

ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
RECBOLE_WHEEL = "recbole==1.2.1"


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMREC_CACHE", Path.home() / ".cache" / "streamrec"))


def ml100k_dir(path: str | Path | None = None) -> Path:
    """Find (or fetch into the cache) a folder with the three ML-100k files."""
    candidates = [Path(path)] if path is not None else []
    candidates.append(cache_dir() / "ml-100k")
    for folder in candidates:
        if all((folder / f).exists() for f in ML100K_FILES):
            return folder
    if path is not None:
        raise DataError(f"{path}: does not hold {', '.join(ML100K_FILES)}")
    return _fetch_ml100k_from_wheel(cache_dir() / "ml-100k")


def _fetch_ml100k_from_wheel(dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            RECBOLE_WHEEL,
            "-d",
            tmp,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(
                f"MovieLens-100k is not cached and `pip download {RECBOLE_WHEEL}` failed "
                f"({result.stderr.strip()[-300:]}); pass a folder with {', '.join(ML100K_FILES)}"
            )
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            for name in ML100K_FILES:
                data = z.read(f"recbole/dataset_example/ml-100k/{name}")
                tmp_file = dest / f"{name}.{os.getpid()}.tmp"  # two first runs at once
                tmp_file.write_bytes(data)
                tmp_file.replace(dest / name)
    return dest


def _read_recbole(path: Path) -> pa.Table:
    """recbole atomic files: TSV whose header names are `name:type`; latin-1 text."""
    data = path.read_bytes().decode("latin-1").encode("utf-8")
    table = pacsv.read_csv(
        pa.BufferReader(data),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
    )
    return table.rename_columns([c.split(":")[0] for c in table.column_names])


def _cast_columns(table: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({name: table[name].cast(t) for name, t in types.items()})


def _items(table: pa.Table, id_column: str, genres_column: str, separator: str) -> pa.Table:
    """item_id (int64) and genres (list<string>, split from one text column)."""
    genres = pc.split_pattern(table[genres_column].cast(pa.string()), separator)
    return pa.table({"item_id": table[id_column].cast(pa.int64()), "genres": genres})


def _ratings(table: pa.Table, user_column: str, item_column: str) -> pa.Table:
    """user_id, item_id, rating (float32), timestamp (int64 seconds)."""
    return pa.table(
        {
            "user_id": table[user_column].cast(pa.int64()),
            "item_id": table[item_column].cast(pa.int64()),
            "rating": table["rating"].cast(pa.float32()),
            "timestamp": table["timestamp"].cast(pa.int64()),
        }
    )


def load_ml100k(path: str | Path | None = None) -> pa.Table:
    folder = ml100k_dir(path)
    inter = _read_recbole(folder / "ml-100k.inter")
    users = _read_recbole(folder / "ml-100k.user")
    items = _read_recbole(folder / "ml-100k.item")
    items = _items(items, "item_id", "class", " ")
    number, text = pa.int64(), pa.string()
    users = _cast_columns(
        users,
        {"user_id": number, "age": number, "gender": text, "occupation": text, "zip_code": text},
    )
    log = _ratings(inter, "user_id", "item_id")
    log = _left_join(log, items, "item_id")
    log = _left_join(log, users, "user_id")
    return _finish(log, ["age", "gender", "occupation", "zip_code"])


def load_ml_latest_small(path: str | Path) -> pa.Table:
    """`path`: the ml-latest-small folder, or its ratings.csv (movies.csv must sit beside it)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    ratings_file = check_readable(folder / "ratings.csv" if p.is_dir() else p)
    movies_file = check_readable(folder / "movies.csv")
    ratings = pacsv.read_csv(ratings_file)
    expected = {"userId", "movieId", "rating", "timestamp"}
    if not expected <= set(ratings.column_names):
        raise DataError(f"{ratings_file}: expected columns {sorted(expected)}")
    movies = pacsv.read_csv(movies_file)
    movies = _items(movies, "movieId", "genres", "|")
    log = _ratings(ratings, "userId", "movieId")
    log = _left_join(log, movies, "item_id")
    return _finish(log, [])


def _left_join(left: pa.Table, right: pa.Table, key: str) -> pa.Table:
    """Append `right`'s columns to `left` by `key` (nulls where absent); keeps list columns,
    which Arrow's hash join does not support."""
    index = pc.index_in(left[key], value_set=right[key].combine_chunks())
    for name in right.column_names:
        if name != key:
            left = left.append_column(name, right[name].combine_chunks().take(index))
    return left


def _finish(log: pa.Table, extra: list[str]) -> pa.Table:
    label = pc.cast(pc.greater_equal(log["rating"], 4.0), pa.int8())
    log = log.append_column("label", label)
    log = log.sort_by(
        [("timestamp", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]
    )
    columns = ["user_id", "item_id", "rating", "timestamp", "genres", *extra, "label"]
    return log.select(columns).combine_chunks()


def per_user_time_split(
    log: pa.Table, test_fraction: float = 0.2, user: str = "user_id", time: str = "timestamp"
) -> tuple[pa.Table, pa.Table]:
    """Each user's last `test_fraction` of interactions by time → test; the rest → train.

    A user with n interactions gives round(test_fraction · n) of them to test (ties in time are
    broken by the log's order). Returns (train, test), each in time order.
    """
    users = np.asarray(log[user].to_numpy(), np.int64)
    times = np.asarray(log[time].to_numpy(), np.int64)
    order = np.lexsort((np.arange(len(users)), times, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    n_test = np.rint(counts * test_fraction).astype(np.int64)
    is_test_sorted = rank >= np.repeat(counts - n_test, counts)
    is_test = np.empty(len(users), bool)
    is_test[order] = is_test_sorted
    return log.filter(pa.array(~is_test)), log.filter(pa.array(is_test))


def add_history(
    log: pa.Table,
    length: int = 20,
    positives_only: bool = False,
    user: str = "user_id",
    item: str = "item_id",
) -> pa.Table:
    """Append `history`: list<int64> of the user's previous items (oldest first, at most
    `length`), strictly before each row in the log's order — a behaviour sequence for DIN and
    two-tower user towers that never leaks the row's own item or later ones.
    With positives_only, only rows with label 1 enter the history."""
    users = np.asarray(log[user].to_numpy(), np.int64)
    items = np.asarray(log[item].to_numpy(), np.int64)
    if positives_only:
        keep = np.asarray(log["label"].to_numpy(), np.int64) > 0
    else:
        keep = np.ones(len(users), bool)
    offsets, values = _history(users, items, keep, length)
    history = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return log.append_column("history", history)


@numba.njit(cache=True)
def _history(users, items, keep, length):
    n = users.shape[0]
    order = np.argsort(users, kind="mergesort")  # stable: keeps the log order per user
    counts = np.zeros(n, np.int64)
    seen = 0
    prev_user = -1
    kept_before = np.zeros(n, np.int64)
    for k in range(n):
        i = order[k]
        if users[i] != prev_user:
            prev_user = users[i]
            seen = 0
        kept_before[i] = seen
        counts[i] = min(seen, length)
        if keep[i]:
            seen += 1
    offsets = np.zeros(n + 1, np.int32)
    for i in range(n):
        offsets[i + 1] = offsets[i] + counts[i]
    values = np.empty(offsets[n], np.int64)
    buf = np.empty(n, np.int64)  # the current user's kept items, in order
    prev_user = -1
    m = 0
    for k in range(n):
        i = order[k]
        if users[i] != prev_user:
            prev_user = users[i]
            m = 0
        c = counts[i]
        for j in range(c):
            values[offsets[i] + j] = buf[m - c + j]
        if keep[i]:
            buf[m] = items[i]
            m += 1
    return offsets, values
