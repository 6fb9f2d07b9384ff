"""The model directory holds the best validation epoch, by the configured metric, and the best
epoch survives `--resume`; the last epoch stays in the checkpoint."""

import csv
from pathlib import Path

import pytest

from streamrec import api

REPO = Path(__file__).resolve().parents[2]


def _valid_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["phase"] == "valid"]


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_the_model_is_the_best_epoch_and_resume_keeps_it(tmp_path, data_dir, metric):
    criteo = data_dir / "criteo"
    sets = [
        f"data.train={criteo / 'train.tsv'}",
        f"data.valid=[{criteo / 'dev.tsv'}, {criteo / 'test.tsv'}]",
        f"train.early_stopping_metric={metric}",
        "train.epochs=3",
    ]
    config = REPO / "examples" / "criteo_dcnv2.yaml"
    run = tmp_path / "run"
    report = api.train(config, run, progress=False, overrides=sets)
    rows = _valid_rows(run)
    scores = [float(r[metric]) for r in rows]
    best = (max if metric == "auc" else min)(range(3), key=lambda i: scores[i]) + 1
    assert report.details["best_epoch"] == best < 3  # DCN-v2 over-fits 7,200 rows after one
    saved = api.evaluate(report.model_dir)["metrics"]["label"]
    assert saved[metric] == pytest.approx(scores[best - 1], abs=1e-6)  # the best, not the last
    resumed = api.train(
        config, run, resume=True, progress=False, overrides=[*sets[:3], "train.epochs=4"]
    )
    scores = [float(r[metric]) for r in _valid_rows(run)]
    assert len(scores) == 4
    best = (max if metric == "auc" else min)(range(4), key=lambda i: scores[i]) + 1
    assert resumed.details["best_epoch"] == best
    saved = api.evaluate(resumed.model_dir)["metrics"]["label"]
    assert saved[metric] == pytest.approx(scores[best - 1], abs=1e-6)
