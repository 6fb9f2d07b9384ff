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
