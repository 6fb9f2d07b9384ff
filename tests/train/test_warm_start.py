"""`streamrec train --warm-start`: the daily retrain continues from a model's tables, dense weights
(and a checkpoint's dense optimizer), refuses a model it cannot continue, and every model's
manifest says where it came from."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec import __version__
from streamrec.config import ConfigError, load_config
from streamrec.models.persistence import load_model
from streamrec.store import read_manifest
from streamrec.train.job import run_training
from streamrec.train.preparation import warm_start

REPO = Path(__file__).resolve().parents[2]


def _config(epochs: int = 1):
    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    cfg.train.epochs = epochs
    return cfg


def test_a_warm_start_takes_the_tables_weights_schema_and_optimizer_state(trained_run):
    parent = load_model(trained_run)
    from_checkpoint = warm_start(trained_run / "checkpoint", _config())
    assert from_checkpoint.position is None  # epochs start again, on the new data
    assert from_checkpoint.optimizer is not None and from_checkpoint.optimizer.state_dict()["state"]
    assert from_checkpoint.config.schema == parent.config.schema  # fitted as the weights learnt
    ours = from_checkpoint.model.embeddings.tables["item_id"]
    theirs = parent.model.embeddings.tables["item_id"]
    assert set(ours.live_fids().tolist()) == set(theirs.live_fids().tolist())
    dense = dict(parent.model.named_parameters())
    for name, weight in from_checkpoint.model.named_parameters():
        assert (weight == dense[name]).all(), name
    from_model = warm_start(trained_run, _config())
    assert from_model.optimizer is None  # a model directory holds no dense optimizer state


def test_a_warm_started_epoch_learns_on_from_the_parent(trained_run, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(REPO / "examples" / "ml100k_deepfm.yaml"),
         "--out", str(tmp_path / "next"), "--epochs", "1", "--warm-start",
         str(trained_run / "checkpoint"), "--json", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    warm_auc = json.loads(done.stdout)["metrics"]["label"]["auc"]
    parent = read_manifest(trained_run / "model")
    assert warm_auc > parent.metrics["label"]["auc"]  # a second epoch's worth, not a first's
    lineage = read_manifest(tmp_path / "next" / "model").lineage
    assert lineage.parent.model_version == read_manifest(
        sorted((trained_run / "checkpoint").iterdir())[-1]
    ).model_version
    assert parent.lineage.parent is None


def test_a_model_it_cannot_continue_is_refused_with_the_difference(trained_run):
    other_model = _config()
    other_model.model.name = "dcnv2"
    with pytest.raises(ConfigError, match="deepfm.*dcnv2"):
        warm_start(trained_run, other_model)
    fewer_features = _config()
    fewer_features.schema.embeddings = fewer_features.schema.embeddings[:-1]
    with pytest.raises(ConfigError, match="zip_code"):
        warm_start(trained_run, fewer_features)
    with pytest.raises(ConfigError, match="--warm-start"):
        warm_start(trained_run / "nothing-here", _config())


def test_lineage_records_each_data_file_with_its_size_and_hash(tmp_path, criteo_train):
    cfg = load_config(REPO / "examples" / "criteo_dlrm.yaml")
    cfg.train.epochs = 1
    run_training(cfg, tmp_path / "run", progress=False)
    lineage = read_manifest(tmp_path / "run" / "model").lineage
    files = {Path(f.path).name: f for f in lineage.data}
    train = Path(cfg.data.train)
    assert files[train.name].bytes == train.stat().st_size
    assert files[train.name].sha256 == hashlib.sha256(train.read_bytes()).hexdigest()
    assert lineage.code_version.startswith(__version__) and lineage.data_format == "criteo"
    again = tmp_path / "again"
    run_training(cfg, again, progress=False)
    assert read_manifest(again / "model").lineage.config_sha256 == lineage.config_sha256
