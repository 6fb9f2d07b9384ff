"""Training health rules: each fires on a run built to trigger it, and stays silent on the
example configs (the slow test at the end)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from streamrec.config import HealthRulesConfig, TableConfig, load_config, parse_config
from streamrec.embedding.table import DynamicTable
from streamrec.train.health import HealthRules, HealthStop

REPO = Path(__file__).resolve().parents[2]


def _rules(mode: str = "warn", **thresholds) -> HealthRules:
    return HealthRules(HealthRulesConfig(**{"check_every_steps": 10, **thresholds}), mode)


# ---------------------------------------------------------------- each rule, on its own
def test_a_nan_loss_fires_at_once_and_stop_mode_raises():
    rules = _rules("stop")
    rules.check_loss(1, 0.69)
    assert rules.take_fired() == []
    rules.check_loss(2, float("nan"))
    fired = rules.take_fired()
    assert [w.rule for w in fired] == ["nonfinite_loss"]
    with pytest.raises(HealthStop, match="nonfinite_loss at step 2"):
        rules.raise_if_stopping(fired)
    assert json.dumps(rules.active_json())  # strict JSON: the NaN value is a string


def test_loss_not_decreasing_compares_whole_windows():
    rules = _rules(loss_window_steps=20)
    for step in range(1, 41):
        rules.check_loss(step, 1.0 / step)  # learning
    assert "loss_not_decreasing" not in rules.active
    for step in range(41, 81):
        rules.check_loss(step, 0.3)  # a plateau: the window is not below the one before
    assert "loss_not_decreasing" in rules.active


def test_an_exploding_norm_is_one_warning_not_one_per_step_and_clears_after_a_quiet_interval():
    rules = _rules(exploding_grad_norm=100.0)
    for step, norm in enumerate([1.0, 1e4, 2.0, 1e5, 3.0], start=1):
        rules.check_grad_norm(step, norm)
    assert len(rules.take_fired()) == 1 and "exploding_gradient" in rules.active
    for step in range(6, 14):
        rules.check_grad_norm(step, 1.0)
    assert "exploding_gradient" in rules.active  # last fired at step 4: quiet for 9 steps
    rules.check_grad_norm(14, 1.0)  # quiet for the 10-step check interval
    assert "exploding_gradient" not in rules.active


def test_dead_relu_and_vanishing_gradient_on_a_network_whose_biases_kill_its_units():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(64, 8)
    rules = _rules()
    rules.watch_activations(net)
    net(x).sum().backward()
    rules.unwatch(10)
    rules.check_gradients(10, net, [], measured=True)
    assert rules.take_fired() == []  # a healthy network: silent
    with torch.no_grad():  # every pre-activation negative
        net[0].bias.fill_(-100.0)
        net[2].bias.fill_(-1.0)
    net.zero_grad()
    rules.watch_activations(net)
    net(x).sum().backward()
    rules.unwatch(20)
    rules.check_gradients(20, net, [], measured=True)
    fired = {w.key for w in rules.take_fired()}
    assert fired == {"dead_relu:1", "dead_relu:3"}  # the output bias still learns: not vanishing
    net[4].bias.grad = None
    rules.check_gradients(30, net, [], measured=True)  # only dead units' zero gradients left
    assert "vanishing_gradient" in rules.active


def test_overfit_needs_a_wide_gap_that_keeps_widening():
    rules = _rules(overfit_gap=0.15, overfit_evaluations=2)
    for step, (train, valid) in enumerate([(0.50, 0.52), (0.45, 0.53), (0.40, 0.47)], 1):
        rules.check_generalization(step, train, valid)  # gap 4% → 18% → 17.5%: not widening
    assert "overfit" not in rules.active
    rules.check_generalization(4, 0.35, 0.46)  # 31%: wider twice running? 17.5 → 31 only once
    assert "overfit" not in rules.active
    rules.check_generalization(5, 0.30, 0.48)  # 60%: widened 17.5 → 31 → 60
    assert "overfit" in rules.active


def test_embedding_norm_growth_and_admission_starving_on_real_tables():
    table = DynamicTable.from_config(TableConfig(dim=4, init_scale=0.01), "item")
    strict = DynamicTable.from_config(TableConfig(dim=4, admit_min_count=1000), "user")
    rules = _rules(admission_min_ids=500)
    ids = np.arange(1000, dtype=np.int64)
    table.resolve(ids)
    strict.resolve(ids)
    rules.check_tables(10, {"item": table, "user": strict})
    assert {w.key for w in rules.take_fired()} == {"admission_starving:user"}
    live = table.live_fids()
    table.upsert(live, table.gather_rows(table.live_rows()) * 50)  # rows blown up 50×
    rules.check_tables(20, {"item": table, "user": strict})
    assert {w.key for w in rules.take_fired()} == {"embedding_norm_growth:item"}


def test_rows_that_start_at_zero_grow_without_a_norm_warning():
    """Linear weights (init_scale 0) grow from almost nothing by learning; the rule measures
    growth from the initial scale of embeddings, so it leaves them out."""
    linear = DynamicTable.from_config(TableConfig(dim=1, init_scale=0.0), "leaf@linear")
    rules = _rules()
    ids = np.arange(100, dtype=np.int64)
    linear.resolve(ids)
    linear.upsert(linear.live_fids(), np.full((100, 1), 0.01, np.float32))
    rules.check_tables(10, {"leaf@linear": linear})
    linear.upsert(linear.live_fids(), np.full((100, 1), 1.0, np.float32))  # 100×
    rules.check_tables(20, {"leaf@linear": linear})
    assert rules.take_fired() == []


def test_calibration_drift_is_judged_only_on_enough_positives():
    rules = _rules(calibration_drift=0.3, calibration_min_positives=100,
                   calibration_warmup_steps=10)
    rules.check_calibration(5, "click", 1.8, positives=500)  # a fresh model: not yet judged
    rules.check_calibration(10, "click", 1.8, positives=50)
    rules.check_calibration(10, "like", 1.1, positives=500)
    assert rules.take_fired() == []
    rules.check_calibration(20, "click", 1.8, positives=500)
    assert [w.key for w in rules.take_fired()] == ["calibration_drift:click"]


# ---------------------------------------------------------------- built runs, end to end
def test_lr_100_explodes_and_health_stop_ends_the_run_with_a_checkpoint(tmp_path, ml100k):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", "examples/ml100k_deepfm.yaml", "--out",
         str(out), "-q", "--set", "train.dense_lr=100", "--set", "train.health=stop"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 3, result.stderr
    assert "stopped by the health rule exploding_gradient" in result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["health"][0]["rule"] == "exploding_gradient" and status["step"] <= 50
    assert any((out / "checkpoint").iterdir())  # --resume continues from here
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    scalars = events.Scalars("health/exploding_gradient")
    assert scalars and scalars[0].value > 1e3
    tags = events.Tags()["scalars"]  # admission counts ride along with the training rows
    assert any(t.startswith("ids_admitted/") for t in tags)
    assert any(t.startswith("ids_refused/") for t in tags)


def test_a_two_tower_run_stops_with_a_checkpoint_and_resumes_like_a_ranker(tmp_path, ml100k):
    out = tmp_path / "tt"
    train = [sys.executable, "-m", "streamrec", "train", "examples/ml100k_two_tower.yaml",
             "--out", str(out), "-q", "--set", "train.epochs=1"]
    result = subprocess.run(
        [*train, "--set", "train.health=stop",
         "--set", "train.health_rules.exploding_grad_norm=0.000001"],  # any gradient is "too big"
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 3, result.stderr
    assert "stopped by the health rule exploding_gradient" in result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    status = json.loads((out / "status.json").read_text())
    assert [w["rule"] for w in status["health"]] == ["exploding_gradient"]
    assert not (out / "model").exists()  # stopped: nothing half-trained is served
    stopped_at = json.loads(next((out / "checkpoint").glob("*/manifest.json")).read_text())
    assert stopped_at["trainer"]["position"]["global_step"] == 50  # the first check step
    resumed = subprocess.run(
        [*train, "--resume", "--json", "--set", "train.health=warn"],  # the fix applies now
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed_from_step"] == 50
    assert report["steps"] == 156  # 80,000-odd training rows: 156 full batches, none twice
    assert report["metrics"]["recall@50"] > report["metrics"]["baseline_recall@50"]


def test_biases_that_push_every_pre_activation_negative_fire_dead_relu(tmp_path, ml100k):
    from streamrec.train import job

    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    cfg.train.epochs = 1
    cfg.train.health_rules.check_every_steps = 20
    original = job.fresh_start

    def start_with_dead_units(config, splits):
        start = original(config, splits)
        for module in start.model.modules():
            if isinstance(module, nn.Linear) and module.out_features > 1:
                nn.init.constant_(module.bias, -50.0)  # every ReLU input negative
        return start

    job.fresh_start = start_with_dead_units
    try:
        job.run_training(cfg, tmp_path / "run", progress=False)
    finally:
        job.fresh_start = original
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    rules = {w["rule"] for w in status["health"]}
    assert "dead_relu" in rules, status


def test_an_online_run_reports_calibration_drift_in_status_and_deltas(tmp_path):
    from streamrec.data.stream import LocalLog, LocalLogSource
    from streamrec.train.online import OnlineTrainer

    rng = np.random.default_rng(0)
    log = LocalLog(tmp_path / "log")
    for i in range(12000):  # the label rate jumps from 10% to 90% after 8000 events
        rate = 0.1 if i < 8000 else 0.9
        log.append({"user_id": int(rng.integers(50)), "item_id": int(rng.integers(100)),
                    "label": int(rng.random() < rate), "timestamp": i})
    log.close()
    cfg = parse_config({
        "schema": {"labels": [{"name": "label"}], "timestamp": "timestamp",
                   "embeddings": [{"name": "user_id"}, {"name": "item_id"}]},
        "data": {"batch_size": 200},
        "model": {"name": "lr"},
        "train": {"health_rules": {"check_every_steps": 5, "calibration_warmup_steps": 30}},
        "online": {"deterministic": True, "sync_every_batches": 5, "metrics_window": 1000},
    })
    trainer = OnlineTrainer(cfg, LocalLogSource(tmp_path / "log"), tmp_path / "run",
                            progress=False)
    status = trainer.run(stop_when_idle=0.5)
    warned = [
        (path.name, w)
        for path in sorted((tmp_path / "run" / "deltas").iterdir())
        for w in json.loads((path / "manifest.json").read_text()).get("health", [])
    ]
    assert warned, "no delta carried the warning"
    assert {w["rule"] for _, w in warned} == {"calibration_drift"}
    assert all(w["subject"] == "label" and w["step"] > 8000 / 200 for _, w in warned)  # after
    assert status["health"] == []  # the model re-calibrated to the new rate: cleared


@pytest.mark.slow
def test_the_example_configs_train_without_a_warning(tmp_path, data_dir, ml100k):
    from streamrec.train.job import run_training

    for name in ("ml100k_deepfm", "mlsmall_deepfm", "criteo_dcnv2", "criteo_dlrm"):
        cfg = load_config(REPO / "examples" / f"{name}.yaml")
        out = tmp_path / name
        run_training(cfg, out, progress=False)
        status = out / "status.json"  # written when a rule fires
        assert not status.exists(), f"{name}: {status.read_text()}"
        shutil.rmtree(out)


@pytest.mark.slow
def test_the_online_example_streams_without_a_warning(tmp_path, ml_small_dir):
    from streamrec.data.movielens import load_ml_latest_small
    from streamrec.data.stream import LocalLog, LocalLogSource
    from streamrec.train.online import OnlineTrainer

    log = LocalLog(tmp_path / "log", segment_messages=50_000)
    for record in load_ml_latest_small(ml_small_dir).to_pylist():
        log.append(record)
    log.close()
    cfg = load_config(REPO / "examples" / "mlsmall_online.yaml")
    trainer = OnlineTrainer(cfg, LocalLogSource(tmp_path / "log"), tmp_path / "run",
                            progress=False)
    status = trainer.run(stop_when_idle=1.0)
    assert status["events_trained"] > 100_000
    assert status["health"] == []
    manifests = (tmp_path / "run" / "deltas").glob("*/manifest.json")
    assert not any(json.loads(m.read_text())["health"] for m in manifests)
