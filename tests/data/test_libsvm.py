"""libSVM / libFM / libFFM files: fields and weights read vectorised, bad lines dead-lettered
by line number, and a model trained from one pools its ids with their values as weights."""

import json
import subprocess
import sys
from pathlib import Path

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


def _docs_libsvm_job() -> dict:
    """The example job in docs/config.md ("Data formats"), as the page shows it."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    section = page[page.index("## Data formats"):]
    return yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])


def test_the_documented_libsvm_job_trains_as_is_and_weights_change_its_scores(tmp_path):
    """docs/config.md's libsvm example, unchanged, on a file whose two fields interact: it
    learns, with per-field tables; a second run without data.fields is told what it loses."""
    rng = np.random.default_rng(0)
    users, items = rng.normal(0, 1.5, (40, 2)), rng.normal(0, 1.5, (60, 2))
    lines = []
    for _ in range(6000):
        u, i = rng.integers(40), rng.integers(60)
        w = rng.uniform(0.5, 1.0)
        y = rng.random() < 1 / (1 + np.exp(-2 * w * users[u] @ items[i]))
        lines.append(f"{'+1' if y else '-1'} {u}:{w:.3f} {1000 + i}:1")
    (tmp_path / "train.libsvm").write_text("\n".join(lines[:5000]) + "\n")
    (tmp_path / "valid.libsvm").write_text("\n".join(lines[5000:]) + "\n")
    job = _docs_libsvm_job()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(tmp_path / "job.yaml"), "--out",
         str(tmp_path / "run"), "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["label"]["auc"] > 0.7
    assert "note:" not in done.stderr
    (tmp_path / "two.libsvm").write_text("1 5:0.5 1007:1\n1 5:1.0 1007:1\n")
    scored = subprocess.run(
        [sys.executable, "-m", "streamrec", "predict", str(tmp_path / "run"), "--data",
         str(tmp_path / "two.libsvm"), "--out", str(tmp_path / "s.csv")],
        capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    low, high = [float(x) for x in (tmp_path / "s.csv").read_text().split()[1:]]
    assert abs(high - low) > 0.01  # the same ids, twice the weight on one
    one_field = {**job, "data": {k: v for k, v in job["data"].items() if k != "fields"}}
    one_field["schema"] = {**job["schema"], "embeddings": [
        {"name": "features", "weights": "features_w", "kind": "list<int>"}]}
    one_field["train"] = {"epochs": 1}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one_field))
    told = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(tmp_path / "one.yaml"), "--out",
         str(tmp_path / "run1"), "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert told.returncode == 0, told.stderr
    assert "note: libsvm: every feature index is one field `features`" in told.stderr
