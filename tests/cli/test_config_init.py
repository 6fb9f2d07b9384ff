"""`streamrec config init DATA`: a starting config that trains as is, with every choice stated,
from files it has never seen — and clear refusals where it cannot decide."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from streamrec.config import load_config


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args], capture_output=True, text=True,
        timeout=600, cwd=cwd,
    )


def test_movielens_config_trains_as_is_and_leaves_out_the_column_the_label_is_made_of(
    ml_small_dir, tmp_path
):
    made = _run("config", "init", str(ml_small_dir), "--format", "ml-latest-small",
                "--out", str(tmp_path / "ml.yaml"))
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "ml.yaml").read_text()
    assert text == made.stdout
    assert "rating (it decides the label on every sampled row: a leak)" in text
    cfg = load_config(tmp_path / "ml.yaml")
    assert [e.name for e in cfg.schema.embeddings] == ["user_id", "item_id", "genres"]
    assert cfg.data.split == "per_user_time" and cfg.schema.timestamp == "timestamp"
    trained = _run("train", str(tmp_path / "ml.yaml"), "--out", str(tmp_path / "run"),
                   "--epochs", "1", "--json", "-q")
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["metrics"]["label"]["auc"] > 0.72
    again = _run("config", "init", str(ml_small_dir), "--format", "ml-latest-small",
                 "--out", str(tmp_path / "ml.yaml"))
    assert again.returncode == 2 and "--force" in again.stderr  # never overwrites silently


def test_an_unseen_parquet_file_each_column_gets_a_stated_role_and_the_job_trains(tmp_path):
    rng = np.random.default_rng(1)
    n = 3000
    user = rng.integers(0, 200, n)
    price = rng.lognormal(3, 1, n)
    score = rng.normal(0, 1, n)
    clicked = np.where(rng.random(n) < 1 / (1 + np.exp(-(score + (user % 3 == 0)))), "yes", "no")
    table = pa.table({
        "visitor_id": user,
        "city": rng.choice(["berlin", "lagos", "lima", "oslo"], n),
        "price": price,
        "score": score,
        "tags": [list(rng.choice(["a", "b", "c"], 2, replace=False)) for _ in range(n)],
        "country": ["de"] * n,
        "note": pa.nulls(n, pa.string()),
        "outcome": clicked,
    })
    pq.write_table(table, tmp_path / "events.parquet")
    made = _run("config", "init", "events.parquet", "--label", "outcome", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    written = yaml.safe_load((tmp_path / "events.yaml").read_text())
    rule = written["schema"]["labels"][0]
    expected_positive = "yes" if (clicked == "yes").sum() < n / 2 else "no"
    assert rule == {"name": "outcome", "positive": [expected_positive]}
    roles = {e["name"]: "embedding" for e in written["schema"]["embeddings"]}
    roles |= {d["name"]: d["transform"] for d in written["schema"]["dense"]}
    assert roles == {"visitor_id": "embedding", "city": "embedding", "tags": "embedding",
                     "price": "log1p", "score": "standardize"}
    text = (tmp_path / "events.yaml").read_text()
    assert "country (one value on every sampled row)" in text
    assert "note (missing on every sampled row)" in text
    assert written["data"]["train"] == "events.parquet"  # relative to the config's folder
    trained = _run("train", "events.yaml", "--out", "run", "--json", "-q", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "note: no validation data" in trained.stderr  # said, not silent


def test_it_refuses_what_it_cannot_decide_and_names_the_fix(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,4\n")
    no_label = _run("config", "init", str(tmp_path / "x.csv"), "--out", str(tmp_path / "x.yaml"))
    assert no_label.returncode == 2 and "--label COLUMN" in no_label.stderr
    assert "columns: a, b" in no_label.stderr and "Traceback" not in no_label.stderr
    wrong = _run("config", "init", str(tmp_path / "x.csv"), "--label", "c",
                 "--out", str(tmp_path / "x.yaml"))
    assert wrong.returncode == 2 and "no column 'c'" in wrong.stderr
    no_valid = _run("config", "init", str(tmp_path / "x.csv"), "--label", "a",
                    "--valid", str(tmp_path / "gone.csv"), "--out", str(tmp_path / "x.yaml"))
    assert no_valid.returncode == 2 and "gone.csv" in no_valid.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_a_libsvm_file_gets_weighted_ids_and_the_fields_hint(tmp_path):
    lines = [f"{'+1' if i % 3 else '-1'} {i % 7}:0.5 {10 + i % 5}:1" for i in range(400)]
    (tmp_path / "t.libsvm").write_text("\n".join(lines) + "\n")
    made = _run("config", "init", str(tmp_path / "t.libsvm"), "--out", str(tmp_path / "t.yaml"))
    assert made.returncode == 0, made.stderr
    written = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert written["schema"]["labels"] == [{"name": "label", "values": {-1: 0, 1: 1}}]
    assert written["schema"]["embeddings"] == [
        {"name": "features", "pooling": "sum", "weights": "features_w"}]
    assert "# fields: {name: [first, end)}" in (tmp_path / "t.yaml").read_text()
    trained = _run("train", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "run"), "-q")
    assert trained.returncode == 0, trained.stderr
