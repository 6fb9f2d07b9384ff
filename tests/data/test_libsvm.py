"""libSVM / libFM / libFFM files: fields and weights read vectorised, bad lines dead-lettered
by line number, and a model trained from one pools its ids with their values as weights."""

import json
import subprocess
import sys

import numpy as np
import yaml

from streamrec.data.errors import DeadLetter
from streamrec.data.formats import read_records


def test_libsvm_lines_become_weighted_id_lists_and_bad_lines_are_dead_lettered(tmp_path):
    path = tmp_path / "t.libsvm"
    path.write_text("1 3:1 10:0.5\n-1 2:1\n\n0\nx 5:a\n1 7:2 8:b\n+1 4:1e-1\n")
    dead = DeadLetter()
    rows = [b.to_pydict() for b in read_records(path, dead=dead)]
    assert rows == [{
        "label": [1.0, -1.0, 0.0, 1.0],
        "features": [[3, 10], [2], [], [4]],
        "features_w": [[1.0, 0.5], [1.0], [], [np.float32(0.1)]],
    }]
    assert [(e["line"], e["reason"].split(" ")[0]) for e in dead.examples] == [
        (5, "label"), (6, "token")]
    assert "'8:b'" in dead.examples[1]["reason"]


def test_fields_from_ranges_and_from_libffm_prefixes(tmp_path):
    svm = tmp_path / "t.libsvm"
    svm.write_text("1 3:1 10:0.5\n0 2:1 99:3\n")
    ranges = {"user": [0, 5], "item": [5, 100]}
    batch = next(iter(read_records(svm, fields=ranges)))
    assert batch.column("user").to_pylist() == [[3], [2]]
    assert batch.column("item").to_pylist() == [[10], [99]]
    assert batch.column("item_w").to_pylist() == [[0.5], [3.0]]
    ffm = tmp_path / "t.libffm"
    ffm.write_text("1 0:3:1 1:10:0.5\n0 0:2:1\n1 2:5:1 7:1:1\n")
    dead = DeadLetter()
    batch = next(iter(read_records(ffm, dead=dead)))
    assert batch.schema.names == ["label", "f0", "f0_w", "f1", "f1_w", "f2", "f2_w", "f7", "f7_w"]
    assert batch.column("f2").to_pylist() == [[], [], [5]]
    strict_fields = next(iter(read_records(ffm, dead=dead, fields={"f0": [0, 1], "f1": [1, 2]})))
    assert strict_fields.num_rows == 2 and "outside data.fields" in dead.examples[0]["reason"]


def test_a_model_trained_from_libsvm_learns_and_weights_change_its_scores(tmp_path):
    rng = np.random.default_rng(0)
    beta = rng.normal(0, 2, 60)
    lines = []
    for _ in range(6000):
        idx = rng.choice(60, 4, replace=False)
        w = rng.uniform(0.1, 1.0, 4)
        y = rng.random() < 1 / (1 + np.exp(-(beta[idx] * w).sum()))
        lines.append(("+1" if y else "-1") + " " + " ".join(
            f"{i}:{v:.3f}" for i, v in zip(idx, w, strict=True)))
    (tmp_path / "train.libsvm").write_text("\n".join(lines[:5000]) + "\n")
    (tmp_path / "valid.libsvm").write_text("\n".join(lines[5000:]) + "\n")
    cfg = {
        "schema": {
            "labels": [{"name": "label", "values": {-1: 0, 1: 1}}],
            "embeddings": [{"name": "features", "weights": "features_w", "kind": "list<int>"}],
        },
        "default_table": {"dim": 4, "optimizer": "adagrad", "lr": 0.2},
        "data": {"format": "libsvm", "train": "train.libsvm", "valid": ["valid.libsvm"],
                 "batch_size": 256},
        "model": {"name": "lr"},
        "train": {"epochs": 4, "dense_lr": 0.01},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(tmp_path / "job.yaml"), "--out",
         str(tmp_path / "run"), "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["label"]["auc"] > 0.75
    (tmp_path / "two.libsvm").write_text("1 5:0.2\n1 5:0.8\n")
    scored = subprocess.run(
        [sys.executable, "-m", "streamrec", "predict", str(tmp_path / "run"), "--data",
         str(tmp_path / "two.libsvm"), "--out", str(tmp_path / "s.csv")],
        capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    low, high = [float(x) for x in (tmp_path / "s.csv").read_text().split()[1:]]
    assert (high - low) * np.sign(beta[5]) > 0.01  # the same id, four times the weight
