"""Distillation (`train.distill_from`): the student's loss targets are the teacher's
probabilities for the very rows it trains on, and configs that cannot work are refused."""

from pathlib import Path

import pytest
import torch

from streamrec.config import ConfigError, load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.loader import BatchLoader
from streamrec.data.splits import open_splits
from streamrec.models.persistence import load_model
from streamrec.train.job import run_training
from streamrec.train.preparation import _distilled, _teacher, training_rows

REPO = Path(__file__).resolve().parents[2]


def _student(teacher: Path, weight: float = 1.0):
    cfg = load_config(REPO / "examples" / "ml100k_cold.yaml")
    cfg.train.epochs = 1
    cfg.train.distill_from = str(teacher)
    cfg.train.distill_weight = weight
    return cfg


def test_targets_are_the_teachers_probabilities_for_the_same_rows(trained_run):
    cfg = _student(trained_run, weight=0.75)
    splits = open_splits(cfg.data, DeadLetter())
    schema, teacher = _teacher(cfg)
    rows = training_rows(cfg, splits.train, 0)
    again = training_rows(cfg, splits.train, 0)
    first = next(_distilled(BatchLoader(rows, cfg.schema, 256), BatchLoader(again, schema, 256),
                            teacher, 0.75))
    own = next(iter(BatchLoader(training_rows(cfg, splits.train, 0), schema, 256)))
    expected = 0.75 * teacher.predict(own)[:, :1] + 0.25 * first.labels
    assert torch.allclose(first.targets, expected)
    assert ((first.targets > 0) & (first.targets < 1)).all()  # soft, not the 0/1 labels
    assert first.slice(0, 10).targets.shape == (10, 1)  # a torchrun rank's share keeps them


def test_a_distilled_student_trains_end_to_end(trained_run, tmp_path):
    result, model_dir = run_training(_student(trained_run), tmp_path / "student", progress=False)
    assert result.metrics["label"]["auc"] > 0.75  # evaluated on real labels, as always
    assert load_model(model_dir).config.train.distill_from == str(trained_run)


def test_configs_that_cannot_distil_are_refused(trained_run, tmp_path):
    with pytest.raises(ValueError, match="negative_sampling_rate"):
        cfg = _student(trained_run)
        cfg.train.__class__.model_validate(
            {**cfg.train.model_dump(), "negative_sampling_rate": 0.5}
        )
    cfg = _student(trained_run)
    cfg.train.distill_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="distill_from"):
        _teacher(cfg)
