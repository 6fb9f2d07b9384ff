"""Labels are 0/1 unless the config maps them: a file of −1/+1 or 1–5 labels stops with one
line naming the column and value (it trained to AUC 0.5 and negative logloss before), a
threshold maps them, and a metric that is undefined is null with its reason, never NaN."""

import json
import subprocess
import sys

import yaml


def _job(tmp_path, labels: list, threshold: float | None = None, valid_labels=None, rule=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = ["label,user_id,item_id"] + [
        f"{labels[i % len(labels)]},{i % 13},{i % 17}" for i in range(400)
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    valid = ["label,user_id,item_id"] + [
        f"{(valid_labels or labels)[i % len(valid_labels or labels)]},{i % 13},{i % 5}"
        for i in range(100)
    ]
    (tmp_path / "valid.csv").write_text("\n".join(valid) + "\n")
    label = {"name": "label"} if threshold is None else {"name": "label", "threshold": threshold}
    label.update(rule or {})
    cfg = {
        "schema": {"labels": [label], "embeddings": [{"name": "user_id"}, {"name": "item_id"}]},
        "data": {"train": str(tmp_path / "train.csv"), "valid": [str(tmp_path / "valid.csv")],
                 "batch_size": 100},
        "model": {"name": "lr"},
        "train": {"epochs": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(path), "--out", str(tmp_path / "run"),
         "--json", "-q"], capture_output=True, text=True, timeout=300,
    )


def test_labels_that_are_not_0_1_stop_with_one_line(tmp_path):
    result = _job(tmp_path, [-1, 1])
    assert result.returncode == 2, result.stdout
    assert "train.csv: data row 1: label 'label' is -1" in result.stderr
    assert "threshold" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_threshold_maps_ratings_to_labels(tmp_path):
    result = _job(tmp_path, [1, 2, 3, 4, 5], threshold=4)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]["label"]
    assert 0 <= metrics["logloss"] and 0 <= metrics["auc"] <= 1


def test_an_undefined_metric_is_null_with_its_reason(tmp_path):
    result = _job(tmp_path, [0, 1], valid_labels=[0])  # validation holds one class only
    assert result.returncode == 0, result.stderr
    assert "NaN" not in result.stdout
    metrics = json.loads(result.stdout)["metrics"]["label"]
    assert metrics["auc"] is None and metrics["calibration"] is None
    assert metrics["undefined"]["auc"] == "the labels hold one class only"


def test_a_value_map_and_a_positive_list_map_labels(tmp_path):
    mapped = _job(tmp_path / "map", [-1, 1], rule={"values": {-1: 0, 1: 1}})
    assert mapped.returncode == 0, mapped.stderr
    assert json.loads(mapped.stdout)["metrics"]["label"]["auc"] is not None
    actions = _job(tmp_path / "actions", ["view", "click", "view"], rule={"positive": ["click"]})
    assert actions.returncode == 0, actions.stderr
    unlisted = _job(tmp_path / "unlisted", [-1, 1, 0], rule={"values": {-1: 0, 1: 1}})
    assert unlisted.returncode == 2 and "data row 3: label 'label' is 0" in unlisted.stderr


def test_a_stream_label_map_dead_letters_what_it_cannot_map(tmp_path):
    from streamrec.config import parse_config
    from streamrec.data.stream import LocalLog, LocalLogSource
    from streamrec.train.online import OnlineTrainer

    log = LocalLog(tmp_path / "log")
    for i in range(300):
        log.append({"user": i % 7, "event": ["view", "click"][i % 2], "timestamp": i})
    log.append({"user": 1, "event": None, "timestamp": 5})
    log.close()
    cfg = parse_config({
        "schema": {"labels": [{"name": "event", "positive": ["click"]}],
                   "embeddings": [{"name": "user", "kind": "int"}]},
        "data": {"batch_size": 100},
        "model": {"name": "lr"},
        "online": {"deterministic": True},
    })
    trainer = OnlineTrainer(cfg, LocalLogSource(tmp_path / "log"), tmp_path / "run",
                            progress=False)
    status = trainer.run(stop_when_idle=0.3)
    assert status["events_trained"] == 300 and status["dead_lettered"] == 1
    assert trainer.metrics.windowed()["event"]["count"] == 300


def test_a_missing_label_names_its_file_and_row(tmp_path):
    result = _job(tmp_path, [0, 1, 1, ""])  # every fourth row has no label
    assert result.returncode == 2
    assert "train.csv: data row 4: label 'label' is missing" in result.stderr
