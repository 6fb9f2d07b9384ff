"""`streamrec data …` through the real command line, checked against independent counts."""

import csv
import json
import subprocess
import sys
from collections import defaultdict

import pyarrow.parquet as pq

from streamrec.data.records import CRITEO_COLUMNS


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args], capture_output=True, text=True, timeout=300
    )


def test_inspect_criteo_matches_counts_computed_with_the_csv_module(criteo_train):
    result = _run("data", "inspect", str(criteo_train), "--format", "criteo", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    missing: dict[str, int] = defaultdict(int)
    values: dict[str, set] = defaultdict(set)
    rows = 0
    with open(criteo_train, newline="") as fh:
        for record in csv.reader(fh, delimiter="\t"):
            rows += 1
            for name, v in zip(CRITEO_COLUMNS, record, strict=True):
                if v == "":
                    missing[name] += 1
                else:
                    values[name].add(v)
    assert report["rows"] == rows == 7200
    assert list(report["columns"]) == CRITEO_COLUMNS
    for name in CRITEO_COLUMNS:
        assert report["columns"][name]["missing"] == missing[name], name
        assert report["columns"][name]["distinct"] == len(values[name]), name


def test_inspect_ml_latest_small(ml_small_dir):
    result = _run(
        "data",
        "inspect",
        str(ml_small_dir / "ratings.csv"),
        "--format",
        "ml-latest-small",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    with open(ml_small_dir / "ratings.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert report["rows"] == len(records) == 100_836
    cols = report["columns"]
    assert cols["user_id"]["distinct"] == len({r["userId"] for r in records})
    assert cols["item_id"]["distinct"] == len({r["movieId"] for r in records})
    assert cols["rating"]["distinct"] == len({r["rating"] for r in records})
    assert cols["timestamp"]["distinct"] == len({r["timestamp"] for r in records})
    assert cols["genres"]["distinct"] == 20


def test_convert_to_parquet_and_bad_input_messages(tmp_path, criteo_train):
    out = tmp_path / "c.parquet"
    result = _run(
        "data", "convert", str(criteo_train), "--out", str(out), "--format", "criteo", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 7200 and pq.read_table(out).num_rows == 7200
    # the old positional output still works, with a note; both at once is refused
    old_form = tmp_path / "old.parquet"
    legacy = _run("data", "convert", str(criteo_train), str(old_form), "--format", "criteo")
    assert legacy.returncode == 0 and "use --out" in legacy.stderr
    assert pq.read_table(old_form).num_rows == 7200
    both = _run("data", "convert", str(criteo_train), str(old_form), "--out", str(out))
    assert both.returncode == 2 and "give only --out" in both.stderr
    missing = _run("data", "inspect", str(tmp_path / "nope.tsv"), "--format", "criteo")
    assert missing.returncode == 2 and "nope.tsv: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\n")
    strict = _run("data", "inspect", str(bad), "--format", "criteo", "--strict")
    assert strict.returncode == 2 and "bad.tsv:1: expected 40 fields, found 2" in strict.stderr
    lenient = _run("data", "inspect", str(bad), "--format", "criteo", "--json")
    assert json.loads(lenient.stdout)["rejected_rows"] == 1
