"""`streamrec demo`: the whole loop on MovieLens-100k — serve, log, act, join, learn, sync.

  1. split MovieLens-100k per user by time: each user's first 80% of ratings to train on; the
     last 20% are what they will watch next (held out, never trained on);
  2. train the two-tower retriever; build the ranker's impression-shaped training set from its
     1,000 candidates per user (`streamrec impressions`) and train the DeepFM ranker on it — so
     the ranker orders what retrieval hands it (recall@50 of both, next to popularity);
  3. start the model server (retrieve 1,000 → rank → top 10), logging every answer's features
     to an impression log and taking clicks on POST /v1/feedback, and a frozen twin;
  4. run the loop: rounds of returning simulated users ask for 10 items, click what they would
     watch (with position bias); two online trainers — the ranker's and the retriever's —
     join impressions with clicks, learn, and each sends a delta to the server every second
     (the retriever's re-indexed before it serves) — CTR per round next to the frozen model's;
  5. ask POST /v1/recommend for three users and print what they get.
Everything runs on this machine: two server processes and two trainer threads; no services.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from math import nan
from pathlib import Path
from typing import Any

import httpx

from streamrec.closed_loop import SimulatedUsers
from streamrec.config import JobConfig, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RETRIEVED = 1000  # K1: the items the server retrieves and the ranker orders
ROUNDS, USERS_PER_ROUND = 6, 100


@dataclass
class TrainedCascade:
    """What steps 1–2 leave for the loop: both models, their offline numbers, the users."""

    retriever_dir: Path
    ranker_dir: Path
    retrieval_metrics: dict[str, float]
    impressions: dict[str, Any]
    users: SimulatedUsers
    recall: dict[str, float]


def run_demo(
    workdir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    rounds: int = ROUNDS,
    users_per_round: int = USERS_PER_ROUND,
) -> dict[str, Any]:
    """Steps 1–5 in `workdir`; returns every number it printed (`streamrec demo --json`)."""
    from streamrec.closed_loop import run_closed_loop

    workdir = Path(workdir)
    started = time.perf_counter()
    ranker_cfg = load_config(EXAMPLES / "ml100k_impression_ranker.yaml")
    trained = train_cascade(workdir, ranker_cfg, progress, log)
    users = trained.users

    log(f"[3/5] serving retrieve {RETRIEVED:,} → rank → top 10, logging impressions and "
        "taking clicks on POST /v1/feedback; a frozen twin beside it")
    log(f"[4/5] the loop: {rounds} rounds of {users_per_round} returning users; clicks → "
        "joiner → online training of the ranker and the retriever → a delta each every second")
    examples = sorted(users.queries)[:3]

    def recommend_three(url: str) -> dict[str, Any]:
        out = {}
        for user in examples:
            body = {"user": users.queries[user], "k": 10, "debug": True}
            out[user] = httpx.post(url + "/v1/recommend", json=body, timeout=30).json()
        return out

    loop = run_closed_loop(
        ranker_cfg, trained.ranker_dir, trained.retriever_dir, users, workdir / "loop", rounds,
        users_per_round, 10, RETRIEVED, seed=0, log=log, before_stop=recommend_three,
    )
    _show_loop(loop, log)
    recommendations = _show_recommendations(loop.pop("before_stop"), users, log)
    rm = trained.retrieval_metrics
    return {
        "recall@50": rm["recall@50"],
        "baseline_recall@50": rm["baseline_recall@50"],
        "ndcg@10": rm["ndcg@10"],
        "impressions": trained.impressions,
        "cascade_recall@50": trained.recall,
        "loop": loop,
        "event_to_delta_p99_s": (loop.get("event_to_delta_seconds") or {}).get("p99", nan),
        "recommendations": recommendations,
        "seconds": time.perf_counter() - started,
    }


def train_cascade(
    workdir: Path, ranker_cfg: JobConfig, progress: bool, log: Callable[[str], None]
) -> TrainedCascade:
    """Steps 1–2: the retriever, the impressions from its candidates, the ranker trained on
    them, and recall@50 of both on the held-out 20%."""
    import pyarrow as pa

    from streamrec import api
    from streamrec.closed_loop import offline_recall
    from streamrec.data.errors import DeadLetter
    from streamrec.data.splits import open_splits

    interactions_cfg = load_config(EXAMPLES / "ml100k_deepfm.yaml")  # the data and its split
    retriever_cfg = load_config(EXAMPLES / "ml100k_two_tower.yaml")
    log("[1/5] MovieLens-100k: each user's first 80% of ratings → training; the last 20% are "
        "what they will watch next (held out)")
    log("[2/5] training the two-tower retriever …")
    retrieval = api.train(retriever_cfg, workdir / "retriever", progress=progress)
    rm = retrieval.metrics
    log(
        f"      retrieval recall@50 {rm['recall@50']:.4f} (popularity "
        f"{rm['baseline_recall@50']:.4f}), index recall@100 vs exact "
        f"{rm['index_recall@100_vs_exact']:.3f}"
    )
    impressions = workdir / "impressions.parquet"
    built = api.impressions(retrieval.model_dir, interactions_cfg, impressions, RETRIEVED)
    log(
        f"      impressions from its {RETRIEVED:,} candidates per user: {built['rows']:,} rows, "
        f"{built['positive_rate']:.1%} watched later; training the "
        f"{ranker_cfg.model.name} ranker on them …"
    )
    ranker_cfg.data.train = str(impressions)
    ranker_dir = api.train(ranker_cfg, workdir / "ranker", progress=progress).model_dir

    splits = open_splits(interactions_cfg.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    users = SimulatedUsers.from_split(
        train, test, retriever_cfg.model.params["user_features"],
        retriever_cfg.data.history_length or 50,
    )
    recall = offline_recall(users, retrieval.model_dir, ranker_dir, RETRIEVED)
    log(
        f"      recall@50 over {len(users.queries)} users: the ranker's order of the "
        f"{RETRIEVED:,} retrieved {recall['ranked']:.4f}; the retriever's own "
        f"{recall['retrieval']:.4f}"
    )
    return TrainedCascade(
        Path(retrieval.model_dir), Path(ranker_dir), rm, built, users, recall
    )


def _show_loop(loop: dict[str, Any], log: Callable[[str], None]) -> None:
    ctr = loop["ctr"]
    log(
        f"      CTR over the last third: closed loop {ctr['closed_loop']:.4f}, frozen "
        f"{ctr['frozen']:.4f} ({ctr['closed_loop'] / max(ctr['frozen'], 1e-9):.2f}×), "
        f"retrieval only {ctr['retrieval_only']:.4f}, popularity {ctr['popularity']:.4f}; "
        f"{loop['impressions_logged']:,} of {loop['impressions_served']:,} answers logged, "
        f"{loop['actions_joined']:,} clicks joined; the ranker trained on "
        f"{loop['examples_trained']:,} examples ({loop['deltas']} deltas), the retriever on "
        f"{loop['retriever_examples_trained'] or 0:,} ({loop['retriever_deltas_served'] or 0} "
        "deltas served, each re-indexed)"
    )


def _show_recommendations(
    answers: dict[int, dict[str, Any]], users: SimulatedUsers, log: Callable[[str], None]
) -> dict[str, list]:
    """Step 5: each example user's /v1/recommend answer, and the last one's stage timings."""
    log("[5/5] POST /v1/recommend for three users:")
    recommendations = {}
    for user, answer in answers.items():
        q = users.queries[user]
        recommendations[str(user)] = answer["items"]
        log(f"      user {user} ({q.get('age')}, {q.get('gender')}, {q.get('occupation')}): "
            f"{answer['items']}")
    d = answer["debug"]
    log(
        f"      stages of the last one: retrieval {d['retrieved']} in "
        f"{1000 * d['seconds']['retrieval']:.1f} ms → ranking {d['ranked']} in "
        f"{1000 * d['seconds']['ranking']:.1f} ms → top 10"
    )
    return recommendations
