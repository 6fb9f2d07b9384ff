import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from streamrec.train.metrics import (
    MetricAccumulator,
    auc,
    calibration,
    ctr_metrics,
    gauc,
    logloss,
    normalized_entropy,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=200))
def test_auc_matches_sklearn_including_ties(pairs):
    labels = np.array([p[0] for p in pairs], float)
    scores = np.array([p[1] for p in pairs], float) / 20  # few distinct values: many ties
    if labels.min() == labels.max():
        assert np.isnan(auc(labels, scores))
    else:
        assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_logloss_ne_calibration_against_sklearn_and_definitions():
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.3).astype(float)
    p = np.clip(0.3 + 0.2 * (y - 0.3) + 0.1 * rng.normal(size=5000), 0.01, 0.99)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)
    base = y.mean()
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert normalized_entropy(y, p) == pytest.approx(log_loss(y, p) / entropy)
    assert normalized_entropy(y, np.full_like(y, base)) == pytest.approx(1.0)
    assert calibration(y, p) == pytest.approx(p.sum() / y.sum())


def test_gauc_weights_groups_by_impressions_and_skips_single_class_groups():
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.6, 0.5, 0.4])
    groups = np.array([1, 1, 1, 1, 2, 2, 3, 3])  # group 3 has only positives: skipped
    g1 = roc_auc_score(labels[:4], scores[:4])
    g2 = roc_auc_score(labels[4:6], scores[4:6])
    assert gauc(labels, scores, groups) == pytest.approx((4 * g1 + 2 * g2) / 6)


def test_metrics_on_real_predictions_match_sklearn(criteo_train):
    import pyarrow as pa
    from sklearn.linear_model import LogisticRegression

    from streamrec.data.records import read_criteo

    table = pa.Table.from_batches(list(read_criteo(criteo_train)))
    x = np.nan_to_num(
        np.stack([table[f"I{i}"].to_numpy(zero_copy_only=False) for i in range(1, 14)], 1)
    )
    x = np.log1p(np.abs(x))
    y = table["label"].to_numpy().astype(float)
    p = LogisticRegression(max_iter=200).fit(x[:6000], y[:6000]).predict_proba(x[6000:])[:, 1]
    m = ctr_metrics(y[6000:], p)
    assert m["auc"] == pytest.approx(roc_auc_score(y[6000:], p), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y[6000:], p), rel=1e-9)


def test_accumulator_lifetime_and_window():
    acc = MetricAccumulator(["click"], window=100)
    rng = np.random.default_rng(1)
    all_y, all_p = [], []
    for _ in range(10):
        y = (rng.random(50) < 0.5).astype(float)
        p = rng.random(50)
        acc.update(y[:, None], p[:, None])
        all_y.append(y)
        all_p.append(p)
    y, p = np.concatenate(all_y), np.concatenate(all_p)
    assert acc.lifetime()["click"]["auc"] == pytest.approx(roc_auc_score(y, p))
    assert acc.windowed()["click"]["auc"] == pytest.approx(roc_auc_score(y[-100:], p[-100:]))
    assert acc.windowed()["click"]["count"] == 100
