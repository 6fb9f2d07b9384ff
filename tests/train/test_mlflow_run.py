"""MLflow tracking, read back with MLflow's own client: a batch run's params, per-step and
validation metrics, artifacts and model version; an online run; a resumed run continuing the
same MLflow run; a tracking store that fails never stops training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from streamrec.config import parse_config
from streamrec.store import read_manifest
from streamrec.train.mlflow_run import MlflowRun, MlflowUnavailable, flatten

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _client(run_dir: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    return client, (run_dir / "mlflow_run_id").read_text().strip()


def test_flatten_gives_one_param_per_leaf_and_bounds_long_values():
    params = flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": "x"}, {"e": None}], "f": True,
                      "g": "y" * 900})
    assert params == {"a.b": "1", "a.c": "[1, 2]", "d.0.e": "x", "d.1.e": "null",
                      "f": "true", "g": "y" * 499 + "…"}


def test_a_training_run_reads_back_from_mlflow(tmp_path, ml100k):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(REPO / "examples" / "ml100k_deepfm.yaml"),
         "--out", str(run), "--epochs", "1", "--mlflow", "local", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    client, run_id = _client(run)
    tracked = client.get_run(run_id)
    manifest = read_manifest(run / "model")
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert client.get_experiment(tracked.info.experiment_id).name == "ml100k_deepfm"
    params = tracked.data.params
    assert params["model.name"] == "deepfm" and params["train.epochs"] == "1"
    assert params["schema.embeddings.0.name"] == "user_id"
    losses = client.get_metric_history(run_id, "train/loss")
    assert len(losses) >= 10 and [m.step for m in losses] == sorted(m.step for m in losses)
    assert tracked.data.metrics["valid/auc"] == pytest.approx(manifest.metrics["label"]["auc"])
    assert tracked.data.tags["streamrec.model_version"] == str(manifest.model_version)
    assert tracked.data.tags["streamrec.code_version"] == manifest.lineage.code_version
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "metrics.csv", "model"} <= artifacts
    pointer = Path(client.download_artifacts(run_id, "model/model_dir.txt", str(tmp_path)))
    assert Path(pointer.read_text().strip()) == (run / "model").resolve()


def test_an_online_run_tracks_its_windowed_metrics(tmp_path):
    from streamrec.data.stream import LocalLog, LocalLogSource
    from streamrec.train.online import OnlineTrainer

    rng = np.random.default_rng(0)
    log = LocalLog(tmp_path / "log")
    for i in range(3000):
        log.append({"user_id": int(rng.integers(50)), "item_id": int(rng.integers(100)),
                    "label": int(rng.random() < 0.3), "timestamp": i})
    log.close()
    cfg = parse_config({
        "name": "online_tracked",
        "schema": {"labels": [{"name": "label"}], "timestamp": "timestamp",
                   "embeddings": [{"name": "user_id"}, {"name": "item_id"}]},
        "data": {"batch_size": 200},
        "model": {"name": "lr"},
        "train": {"mlflow": "local"},
        "online": {"sync_every_batches": 5, "metrics_window": 1000},
    })
    OnlineTrainer(cfg, LocalLogSource(tmp_path / "log"), tmp_path / "run",
                  progress=False).run(stop_when_idle=0.5)
    client, run_id = _client(tmp_path / "run")
    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED"
    assert client.get_metric_history(run_id, "online/auc")
    checkpoint = read_manifest(sorted((tmp_path / "run" / "checkpoint").iterdir())[-1])
    assert tracked.data.tags["streamrec.model_version"] == str(checkpoint.model_version)


def test_a_resumed_run_continues_its_mlflow_run_and_a_fresh_one_does_not(tmp_path):
    from streamrec.train.run_dir import RunDir

    first = MlflowRun.start("local", tmp_path, "exp", {"a": 1})
    first.finish(None, status="FAILED")  # killed: --resume continues it
    again = MlflowRun.start("local", tmp_path, "exp", {"a": 1})
    assert again.run_id == first.run_id
    assert again.client.get_run(again.run_id).info.status == "RUNNING"
    run = RunDir(tmp_path).open()
    run.start_afresh()
    run.release()
    assert MlflowRun.start("local", tmp_path, "exp", {"a": 1}).run_id != first.run_id


def test_a_failing_tracking_store_is_reported_once_and_training_goes_on(tmp_path, caplog):
    tracked = MlflowRun.start("local", tmp_path, "exp", {})

    class Down:
        def log_batch(self, *args, **kwargs):
            raise ConnectionError("tracking server gone")

    tracked.client = Down()
    tracked.metrics("train", {"loss": 0.5}, 1)
    tracked.metrics("train", {"loss": 0.4}, 2)  # not tried again
    assert tracked.failed and caplog.text.count("tracking server gone") == 1
    with pytest.raises(MlflowUnavailable, match="did not start"):
        MlflowRun.start("nosuchscheme://host", tmp_path / "x", "e", {})


def test_push_registers_each_published_model_as_a_version(trained_run, tmp_path):
    from streamrec.push import push

    uri = (tmp_path / "registry").as_uri()
    first = push(trained_run, tmp_path / "serving", mlflow=uri)
    second = push(trained_run, tmp_path / "serving", gate="auc >= baseline", mlflow=uri)
    assert [first["mlflow"]["version"], second["mlflow"]["version"]] == [1, 2]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    registered = client.get_model_version("ml100k_deepfm", "2")
    assert registered.source == str((tmp_path / "serving" / "000000000002").resolve())
    assert registered.tags["streamrec.model_version"] == str(second["candidate_model_version"])
    log = [json.loads(line) for line in (tmp_path / "serving" / "push_log.jsonl").open()]
    assert [e["mlflow"]["version"] for e in log] == [1, 2]
