"""`streamrec train` / `eval` / `report` end to end through the command line, on real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.slow
def test_train_criteo_then_eval_gives_the_same_auc(tmp_path, data_dir):
    out = tmp_path / "run"
    result = _run("train", "examples/criteo_dcnv2.yaml", "--out", str(out), "--json", "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    m = report["metrics"]["label"]
    assert set(m) >= {"auc", "logloss", "ne", "calibration"}
    assert m["auc"] > 0.70 and m["count"] == 800 and report["samples_per_s"] > 0
    evaluated = _run("eval", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["metrics"]["label"]["auc"] == pytest.approx(m["auc"])
    plot = _run("report", str(out))
    assert plot.returncode == 0 and (out / "curves.png").stat().st_size > 10_000
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("phase,epoch,step,samples,loss,auc")


def test_config_and_model_errors_are_one_line_messages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: {labels: [{name: label}]}\ntrain: {epochs: 0}\n")
    result = _run("train", str(bad))
    assert result.returncode == 2 and "train.epochs" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _run("eval", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a model directory" in missing.stderr


def test_export_drops_optimizer_state_and_keeps_predictions(tmp_path, ml100k):
    import torch

    from streamrec.config import load_config
    from streamrec.models.persistence import load_model
    from streamrec.train.job import run_training

    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    cfg.train.epochs = 1
    cfg.default_table.optimizer = "adam"
    run_training(cfg, tmp_path / "run", progress=False)
    result = _run("export", str(tmp_path / "run"), "--out", str(tmp_path / "serving"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["table_bytes_after"] < 0.8 * report["table_bytes_before"]
    a, b = load_model(tmp_path / "run"), load_model(tmp_path / "serving")
    rows = ml100k.slice(0, 300)
    batch = a.config.schema.encode(rows)
    assert torch.equal(a.model.predict(batch), b.model.predict(batch))
    assert b.config.default_table.optimizer == "sgd"
    assert all(t.memory_bytes()["optimizer_state"] == 0 for t in b.model.dynamic_tables().values())
