"""The linear model's α and λ2 chosen on the validation split: the coordinate search keeps the
best trial, never a NaN one, the defaults on ties; a job records what it tried and trains the
winner; a config that sets the rates, or turns the search off, is left alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits
from streamrec.store import read_manifest
from streamrec.train.job import run_training
from streamrec.train.rate_search import ALPHAS, L2S, TRIALS, search_rates, wants_rate_search

REPO = Path(__file__).resolve().parents[2]


def _lr_config():
    cfg = load_config(REPO / "examples" / "criteo_dlrm.yaml")
    cfg.model.name, cfg.model.params = "lr", {}
    return cfg


def _search(score_of):
    cfg = _lr_config()
    seen = []

    def train(config, model, run_dir):
        rates = config.model.params["row_optimizer"]
        seen.append((rates["lr"], rates["ftrl_l2"]))
        assert run_dir.is_dir() and model.linear is not None
        return score_of(rates["lr"], rates["ftrl_l2"])

    chosen, trials = search_rates(cfg, train)
    return chosen.model.params["row_optimizer"], trials, seen


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ({(0.1, 1.0): 0.70, (0.3, 1.0): 0.72, (1.0, 1.0): 0.71, (0.3, 10.0): 0.73},
         {"lr": 0.3, "ftrl_l2": 10.0}),
        ({(0.1, 1.0): 0.74, (0.3, 1.0): 0.72, (1.0, 1.0): 0.71, (0.1, 10.0): 0.73},
         {"lr": 0.1, "ftrl_l2": 1.0}),
        ({(0.1, 1.0): math.nan, (0.3, 1.0): math.nan, (1.0, 1.0): 0.6, (1.0, 10.0): math.nan},
         {"lr": 1.0, "ftrl_l2": 1.0}),
        ({(0.1, 1.0): 0.7, (0.3, 1.0): 0.7, (1.0, 1.0): 0.7, (0.3, 10.0): 0.7},
         {"lr": 0.3, "ftrl_l2": 1.0}),  # ties keep the defaults
    ],
)
def test_the_coordinate_search_keeps_the_best_trial(scores, expected):
    chosen, trials, seen = _search(lambda a, l2: scores[a, l2])
    assert chosen == expected
    assert len(seen) == len(set(seen)) == TRIALS  # each pair trained once
    assert {t["alpha"] for t in trials} <= set(ALPHAS) and {t["l2"] for t in trials} <= set(L2S)


def test_it_runs_only_for_lr_with_validation_data_and_no_rates_given():
    cfg = _lr_config()
    splits = open_splits(cfg.data, DeadLetter())
    assert wants_rate_search(cfg, splits)
    for params in ({"linear_lr": 0.1}, {"row_optimizer": {}}, {"rate_search": False}):
        cfg.model.params = params
        assert not wants_rate_search(cfg, splits), params
    cfg.model.params = {}
    cfg.data.valid = []
    assert not wants_rate_search(cfg, open_splits(cfg.data, DeadLetter()))
    deep = load_config(REPO / "examples" / "criteo_dlrm.yaml")
    assert not wants_rate_search(deep, open_splits(deep.data, DeadLetter()))


def test_a_job_records_its_trials_and_trains_the_winner(tmp_path, criteo_train):
    cfg = _lr_config()
    run_training(cfg, tmp_path / "run", progress=False)
    manifest = read_manifest(tmp_path / "run" / "model")
    trials = manifest.train["rate_search"]
    assert len(trials) == TRIALS
    best = max(trials, key=lambda t: t["score"])
    assert manifest.config["model"]["params"]["row_optimizer"] == {
        "lr": best["alpha"], "ftrl_l2": best["l2"]
    }
    assert manifest.metrics["label"]["auc"] == pytest.approx(best["score"], abs=1e-9)
    fixed = _lr_config()
    fixed.model.params = {"rate_search": False}
    run_training(fixed, tmp_path / "fixed", progress=False)
    assert "rate_search" not in read_manifest(tmp_path / "fixed" / "model").train
