"""Exploration from uncertainty: the share of explored slots, what fills them, and the server —
/v1/rank returns each candidate's σ, /v1/recommend explores the configured share of slots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.serving.exploration import choose, explore_slots

USER = {"user_id": 5, "age": 33, "gender": "F", "occupation": "other"}


@pytest.mark.parametrize(("k", "share"), [(10, 0.15), (7, 0.5), (3, 0.1), (20, 1.0)])
def test_the_share_of_explored_slots_holds_on_average(k, share):
    rng = np.random.default_rng(0)
    draws = [explore_slots(k, share, rng) for _ in range(4000)]
    assert all(int(share * k) <= d <= int(share * k) + 1 for d in draws)
    assert np.mean(draws) == pytest.approx(share * k, abs=0.05 * k * share + 0.02)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0.001, 0.999), min_size=1, max_size=40),
    st.integers(1, 15),
    st.floats(0, 1),
    st.integers(0, 2**32 - 1),
)
def test_exploited_slots_are_the_best_and_explored_ones_come_from_the_rest(
    probabilities, k, share, seed
):
    p = np.array(probabilities)
    sigma = np.random.default_rng(seed).random(p.size)
    order, explored = choose(p, sigma, k, share, np.random.default_rng(seed))
    by_score = np.argsort(-p, kind="stable")
    shown = min(k, p.size)
    assert len(order) == shown == len(set(order.tolist()))
    assert 0 <= explored <= shown
    exploit = order[: shown - explored]
    assert exploit.tolist() == by_score[: shown - explored].tolist()
    assert set(order[shown - explored :].tolist()) <= set(by_score[shown - explored :].tolist())


def test_thompson_slots_go_to_the_uncertain_and_sigma_zero_means_by_score():
    p = np.array([0.9, 0.5, 0.45, 0.44])
    certain = np.zeros(4)
    order, explored = choose(p, certain, 2, 0.5, np.random.default_rng(0))
    assert explored == 1 and order.tolist() == [0, 1]  # σ = 0: the next best by score
    unsure = np.array([0.0, 0.0, 0.0, 3.0])  # item 3: slightly worse, far less known
    wins = sum(
        choose(p, unsure, 2, 0.5, np.random.default_rng(s))[0][1] == 3 for s in range(400)
    )
    # P(logit(0.44) + 3z > logit(0.5) = 0) = P(z > 0.08) ≈ 0.47; with σ = 0 it never wins
    assert 150 < wins < 230


@pytest.fixture(scope="module")
def lr_ranker(tmp_path_factory, ml100k) -> Path:
    from streamrec.config import load_config
    from streamrec.train.job import run_training

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "examples" / "ml100k_deepfm.yaml")
    cfg.model.name, cfg.model.params = "lr", {"rate_search": False}
    cfg.train.epochs = 1
    out = tmp_path_factory.mktemp("lr_ranker") / "run"
    run_training(cfg, out, progress=False)
    return out


@pytest.mark.slow
def test_the_server_returns_sigma_and_explores_the_share_it_is_given(
    lr_ranker, trained_run, retriever_run, start_server
):
    server = start_server(lr_ranker, "--retriever", str(retriever_run), "--explore-share", "0.3")
    candidates = [{"item_id": 50, "genres": ["Comedy"]}, {"item_id": 10**9, "genres": ["Comedy"]}]
    known = server.post("/v1/rank", json={"context": {**USER}, "candidates": candidates})
    assert known.status_code == 200, known.text
    sigma = known.json()["uncertainty"]
    assert len(sigma) == 2 and 0 < sigma[0] < sigma[1]  # an item never seen: wider
    stranger = server.post(
        "/v1/rank", json={"context": {**USER, "user_id": 10**9}, "candidates": candidates[:1]}
    )
    assert stranger.json()["uncertainty"][0] > sigma[0]

    body = server.post("/v1/recommend", json={"user": USER, "k": 10}).json()
    assert body["explored"] == 3  # 0.3 × 10 slots: exactly 3
    scores = body["scores"]
    assert scores[:7] == sorted(scores[:7], reverse=True)  # the exploited slots, by score
    assert min(scores[:7]) >= max(scores[7:])  # explored items come from below them
    assert len(set(body["items"])) == 10
    metrics = server.get("/metrics").text
    assert "streamrec_explored_slots_total 3.0" in metrics

    deep = start_server(trained_run, "--retriever", str(retriever_run), "--explore-share", "0.3")
    plain = deep.post("/v1/recommend", json={"user": USER, "k": 10}).json()
    assert "explored" not in plain  # DeepFM gives no σ: nothing to explore with
    ranked = deep.post("/v1/rank", json={"context": USER, "candidates": candidates}).json()
    assert "uncertainty" not in ranked
