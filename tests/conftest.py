"""Shared fixtures. Real data lives beside the checkout (../shared/data) or at
$STREAMREC_TEST_DATA; where it is absent the tests that need it skip and say why, unless
STREAMREC_REQUIRE_DATA=1 (set by .ci/run), which turns that skip into a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# No time limit per example: the first example of a property test may include compiling (or
# loading from numba's cache) the kernels it calls, ~1 s on a cold process. Speed is measured
# in benchmarks/, never by unit tests.
settings.register_profile("streamrec", deadline=None)
settings.load_profile("streamrec")


def _data_root() -> Path:
    return Path(os.environ.get("STREAMREC_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_root()
    if not (root / "criteo" / "train.tsv").exists():
        message = f"real data not found at {root} (set STREAMREC_TEST_DATA)"
        if os.environ.get("STREAMREC_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def criteo_train(data_dir: Path) -> Path:
    return data_dir / "criteo" / "train.tsv"


@pytest.fixture(scope="session")
def ml_small_dir(data_dir: Path) -> Path:
    return data_dir / "ml-latest-small"


@pytest.fixture(scope="session")
def ml100k():
    """The ML-100k CTR table (cache, else the recbole wheel through pip)."""
    from streamrec.data.movielens import load_ml100k

    return load_ml100k()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, ml100k) -> Path:
    """The ML-100k DeepFM example trained for one epoch, once per session: a run directory
    (`model/`, `checkpoint/`) that tests read — serving, export, warm start, distillation.
    Tests that change a model copy it first."""
    from streamrec.config import load_config
    from streamrec.train.job import run_training

    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    cfg.train.epochs = 1
    out = tmp_path_factory.mktemp("ml100k_deepfm") / "run"
    run_training(cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def retriever_run(tmp_path_factory, ml100k) -> Path:
    """The ML-100k two-tower example trained for one epoch, once per session (read-only)."""
    from streamrec.config import load_config
    from streamrec.train.two_tower import train_two_tower

    cfg = load_config(REPO / "examples" / "ml100k_two_tower.yaml")
    cfg.train.epochs = 1
    out = tmp_path_factory.mktemp("retriever") / "run"
    result, _ = train_two_tower(cfg, out, progress=False)
    assert result["metrics"]["recall@50"] > result["metrics"]["baseline_recall@50"]
    return out
