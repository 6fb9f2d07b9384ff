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
    cfg.default_table.admit_min_count = 2  # an 8 MB sketch per table, whatever its size
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
    # what serving reads: weights, fids and per-row metadata (count, last seen, version)
    needed = sum(
        len(t) * (4 * t.dim + 8 + 4 + 8 + 8) for t in b.model.dynamic_tables().values()
    )
    files = sum(p.stat().st_size for p in (b.path / "tables").iterdir())
    assert files <= 1.1 * needed, (files, needed)


def test_set_and_seed_override_the_config_and_are_validated_like_it(tmp_path):
    config = str(REPO / "examples" / "criteo_dcnv2.yaml")
    typo = _run("train", config, "--set", "train.epoch=2")
    assert typo.returncode == 2 and "train.epoch: Extra inputs are not permitted" in typo.stderr
    bad = _run("train", config, "--set", "default_table.dim=-1")
    assert bad.returncode == 2 and "default_table.dim" in bad.stderr
    shape = _run("train", config, "--set", "train")
    assert shape.returncode == 2 and "key.path=value" in shape.stderr
    runs = []
    for seed in (1, 1, 2):
        out = tmp_path / f"run{len(runs)}"
        args = ["--seed", str(seed), "--set", "data.batch_size=1024", "--json", "-q"]
        result = _run("train", config, "--out", str(out), *args)
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout)["metrics"]["label"]["auc"])
    assert runs[0] == runs[1] != runs[2]  # the seed is the config's train.seed


def test_odd_ids_do_not_flip_a_kind_and_tiny_validation_sets_say_so(tmp_path):
    """Two odd ids among 2,000 integer ids: the model still reads user_id as int (the two rows
    dead-lettered); a validation file of 2 rows of one class: metrics undefined, warned."""
    rows = [f"{i % 2},{i % 97},{i % 13}" for i in range(2000)]
    rows[7] = f"1,{'9' * 5000},3"
    rows[1500] = f"0,{'x' * 100_000},3"
    (tmp_path / "train.csv").write_text("label,user_id,item\n" + "\n".join(rows) + "\n")
    (tmp_path / "valid.csv").write_text("label,user_id,item\n1,3,4\n1,5,6\n")
    cfg = {
        "schema": {"labels": [{"name": "label"}],
                   "embeddings": [{"name": "user_id"}, {"name": "item"}]},
        "data": {"train": str(tmp_path / "train.csv"), "valid": [str(tmp_path / "valid.csv")],
                 "batch_size": 256},
        "model": {"name": "fm"},
    }
    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    done = _run("train", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run"), "-q")
    assert done.returncode == 0, done.stderr
    assert "AUC undefined" in done.stdout and "NE undefined" in done.stdout
    assert "rest on 2 rows" in done.stderr and "one class only" in done.stderr
    manifest = json.loads((tmp_path / "run" / "model" / "manifest.json").read_text())
    assert manifest["input_kinds"]["user_id"] == "int"
    dead = (tmp_path / "run" / "dead_letter.jsonl").read_text().splitlines()
    assert len(dead) == 2 and all("is not int" in json.loads(d)["reason"] for d in dead)
