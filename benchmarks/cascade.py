"""The three-stage cascade (retrieve K1 → pre-rank → rank K2 → top k) vs ranking all K1.

    .venv/bin/python benchmarks/cascade.py --json

MovieLens-100k, per-user time split (as the demo): the two-tower retriever is trained on each
user's first 80%; the DeepFM ranker and COLD pre-rankers on impressions built from its K1
candidates (`streamrec impressions`: what a cascade's rankers score, labelled by each user's
later interactions, with the retrieval score as a feature). For every test user the retriever
returns K1 = 1,000 unseen items, and the top 50 by

  * full:     the ranker's score over all K1 items (the quality a cascade gives up), and
  * cascade:  the pre-ranker's top K2 = 100 of the K1, then the ranker's order of those,

are compared with the user's held-out items (recall@50, as the demo's retrieval figure).
Compute per request, two ways: the wall time to encode and score the rows each stage scores,
through the server's own /v1/recommend path (the catalog's cached encodings, the context
encoded once: `serving/item_encoding.py`), summed per user; and the models' multiply-adds
(every Linear layer's in × out, per row scored) — the measure that does not depend on how
heavy the ranker is next to per-call overheads.
Peers: the full ranker over K1 on the same path ("full"), and on the row path every request
took before issue 33 ("full_rows": dicts → Arrow → `Schema.encode`; its scores are checked
equal to the new path's). Targets: cascade recall ≥ 0.98× full (issue 21), wall time ≤ 0.35×
full (issue 33).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from streamrec import api
from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits
from streamrec.retrieval.evaluate import ranking_metrics, user_items
from streamrec.retrieval.impression_set import RETRIEVAL_SCORE
from streamrec.serving.item_encoding import ItemEncodings
from streamrec.serving.prerank_stage import PreRankStage
from streamrec.serving.request import rows_table
from streamrec.serving.retrieval_stage import RecommendRequest, RetrievalStage
from streamrec.serving.snapshot import Snapshot
from streamrec.train.two_tower import user_queries

REPO = Path(__file__).resolve().parents[1]
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_code")


def train_models(workdir: Path, seed: int, quiet: bool, k1: int) -> dict[str, Path]:
    """The retriever; then, on impressions built from its K1 candidates per user (`streamrec
    impressions`: the rows a cascade's rankers actually score), the ranker and three
    pre-rankers: every feature; the three it gates highest (+ ids); the same, distilled from
    the ranker."""
    out = {}
    retriever = load_config(REPO / "examples" / "ml100k_two_tower.yaml")
    retriever.train.seed = seed
    out["retriever"] = api.train(retriever, workdir / "retriever", progress=not quiet).model_dir
    impressions = workdir / "impressions.parquet"
    interactions = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    api.impressions(out["retriever"], interactions, impressions, k1)
    ranker = load_config(REPO / "examples" / "ml100k_impression_ranker.yaml")
    ranker.data.train = str(impressions)
    for name, example, edit in (
        ("ranker", "ml100k_impression_ranker", None),
        ("cold", "ml100k_cold", None),
        ("cold_small", "ml100k_cold", "small"),
        ("cold_small_distilled", "ml100k_cold", "distilled"),
    ):
        cfg = load_config(REPO / "examples" / f"{example}.yaml")
        cfg.train.seed = seed
        if example == "ml100k_cold":  # the ranker's data and features, COLD's model
            cfg.data = ranker.data.model_copy(deep=True)
            cfg.schema_ = ranker.schema_.model_copy(deep=True)
            cfg.serving.context_features = list(ranker.serving.context_features)
            cfg.train.epochs = 1
        else:
            cfg.data.train = str(impressions)
        if edit in ("small", "distilled"):  # COLD's second round: the features gated highest
            importance = api.evaluate(out["cold"], str(impressions))["feature_importance"]
            keep = set(list(importance)[:3]) | {"user_id", "item_id"}
            cfg.schema_.embeddings = [f for f in cfg.schema_.embeddings if f.name in keep]
            cfg.serving.context_features = [f for f in cfg.serving.context_features if f in keep]
            cfg.model.params = {"hidden": [32]}
        if edit == "distilled":  # … trained on the ranker's probabilities instead of labels
            cfg.train.distill_from = str(out["ranker"])
        report = api.train(cfg, workdir / name, progress=not quiet)
        out[name] = report.model_dir
    return out


def users_and_truth(seed: int) -> tuple[list[dict], dict[int, set[int]], dict[int, set[int]]]:
    """Each test user's features (the retriever's and the ranker's), held-out items, seen."""
    cfg = load_config(REPO / "examples" / "ml100k_two_tower.yaml")
    splits = open_splits(cfg.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    user_features = cfg.model.params["user_features"]
    queries = user_queries(train, user_features, cfg.data.history_length or 50).to_pylist()
    last = {r["user_id"]: r for r in train.select(list(USER_COLUMNS)).to_pylist()}
    seen = {u: set(v) for u, v in user_items(train).items()}
    truth = {u: set(v) for u, v in user_items(test).items() if u in seen}
    users = []
    for q in queries:
        if q["user_id"] in truth:
            users.append({**last[q["user_id"]], **{f: q[f] for f in user_features}})
    return users, truth, seen


def multiply_adds_per_row(snapshot: Snapshot) -> int:
    """Σ in × out over the model's Linear layers: its dense compute per row scored."""
    return sum(
        m.in_features * m.out_features
        for m in snapshot.model.modules()
        if isinstance(m, torch.nn.Linear)
    )


def score(snapshot: Snapshot, user: dict, rows: list[dict]) -> tuple[np.ndarray, float]:
    """The model's first-task scores of `rows` for `user`, and the seconds it took."""
    context = {f: v for f, v in user.items() if f in snapshot.context_features}
    candidates = [{f: r[f] for f in snapshot.candidate_features if f in r} for r in rows]
    start = time.perf_counter()
    scores = snapshot.predict(rows_table(context, candidates, snapshot.kinds))[:, 0]
    return scores, time.perf_counter() - start


def score_encoded(
    snapshot: Snapshot,
    encodings: ItemEncodings,
    catalog: RetrievalStage,
    user: dict,
    items: list[int],
    found: np.ndarray,
) -> tuple[np.ndarray, float]:
    """As `score`, through the server's /v1/recommend path since issue 33: the catalog's
    cached encodings, the context encoded once, the retrieval score as a column."""
    context = {f: v for f, v in user.items() if f in snapshot.context_features}
    start = time.perf_counter()
    batch = encodings.batch(context, np.asarray(items), catalog, {RETRIEVAL_SCORE: found})
    scores = snapshot.predict_batch(batch)[:, 0]
    return scores, time.perf_counter() - start


def _encodings(snapshot: Snapshot, catalog: RetrievalStage) -> ItemEncodings:
    """A model's encodings of the whole catalog, made before timing (a server makes each
    item's once, at its first request)."""
    encodings = ItemEncodings(
        snapshot.schema, snapshot.kinds, snapshot.context_features,
        snapshot.candidate_features, per_request=(RETRIEVAL_SCORE,),
    )
    encodings.batch({}, np.fromiter(catalog.catalog, np.int64), catalog)
    return encodings


def existing_models(workdir: Path) -> dict[str, Path] | None:
    names = ("retriever", "ranker", "cold", "cold_small", "cold_small_distilled")
    dirs = {n: workdir / n / "model" for n in names}
    return dirs if all((d / "manifest.json").exists() for d in dirs.values()) else None


def run(
    workdir: Path,
    k1: int,
    k2: int,
    k: int,
    seed: int,
    quiet: bool,
    sweep: tuple[int, ...] = (),
    reuse: bool = False,
) -> dict:
    dirs = (reuse and existing_models(workdir)) or train_models(workdir, seed, quiet, k1)
    users, truth, seen = users_and_truth(seed)
    retrieval = RetrievalStage.load(dirs["retriever"])
    ranker = Snapshot.load(dirs["ranker"])
    names = ("cold", "cold_small", "cold_small_distilled")
    prerankers = {n: PreRankStage.load(dirs[n], k2) for n in names}
    ranker_encodings = _encodings(ranker, retrieval)
    pre_encodings = {n: _encodings(stage.snapshot, retrieval) for n, stage in prerankers.items()}
    recs: dict[str, dict[int, list[int]]] = {"full": {}, "retrieval": {}}
    seconds: dict[str, float] = {"full": 0.0, "full_rows": 0.0}
    for name in prerankers:
        recs[name] = {}
        seconds[name] = 0.0
    # K2 sweep: the ranker scores each item on its own, so ranking a kept subset is its full
    # scores restricted to the subset — no extra model calls.
    swept: dict[tuple[str, int], dict[int, list[int]]] = {
        (n, size): {} for n in prerankers for size in sweep
    }
    for user in users:
        uid = user["user_id"]
        wanted = RecommendRequest(
            {f: user[f] for f in retrieval.kinds if f in user}, k1, seen[uid]
        )
        items, found = retrieval.retrieve(wanted)
        items = items[:k1]
        features = [*retrieval.catalog[items[0]].keys(), RETRIEVAL_SCORE]
        by_item = dict(zip(items, found.tolist(), strict=False))
        rows = retrieval.item_rows(items, features, by_item)
        recs["retrieval"][uid] = items[:k]
        found = np.asarray(found[: len(items)], np.float64)
        full_rows, spent = score(ranker, user, rows)  # the row path: dicts → Arrow → encode
        seconds["full_rows"] += spent
        full, spent = score_encoded(ranker, ranker_encodings, retrieval, user, items, found)
        np.testing.assert_allclose(full, full_rows, rtol=0, atol=1e-6)  # the same scores
        seconds["full"] += spent
        recs["full"][uid] = [items[i] for i in np.argsort(-full, kind="stable")[:k]]
        for name, stage in prerankers.items():
            pre, spent_pre = score_encoded(
                stage.snapshot, pre_encodings[name], retrieval, user, items, found
            )
            keep = np.argsort(-pre, kind="stable")[:k2]
            ranked, spent_rank = score_encoded(
                ranker, ranker_encodings, retrieval, user, [items[i] for i in keep], found[keep]
            )
            seconds[name] += spent_pre + spent_rank
            recs[name][uid] = [items[keep[i]] for i in np.argsort(-ranked, kind="stable")[:k]]
            for size in sweep:
                kept = np.argsort(-pre, kind="stable")[:size]
                order = kept[np.argsort(-full[kept], kind="stable")[:k]]
                swept[(name, size)][uid] = [items[i] for i in order]
    quality = {name: ranking_metrics(r, truth)[f"recall@{k}"] for name, r in recs.items()}
    per_request_ms = {name: 1000 * s / len(users) for name, s in seconds.items()}
    ranker_macs = multiply_adds_per_row(ranker)
    macs = {"full": k1 * ranker_macs}
    for name, stage in prerankers.items():
        macs[name] = k1 * multiply_adds_per_row(stage.snapshot) + k2 * ranker_macs
    return {
        "users": len(users),
        "k1": k1,
        "k2": k2,
        "k": k,
        f"recall@{k}": quality,
        "model_ms_per_request": per_request_ms,
        "recall_ratio_vs_full": {n: quality[n] / quality["full"] for n in prerankers},
        "compute_ratio_vs_full": {
            n: per_request_ms[n] / per_request_ms["full"] for n in prerankers
        },
        "compute_ratio_vs_full_rows": {
            n: per_request_ms[n] / per_request_ms["full_rows"] for n in prerankers
        },
        "multiply_adds_per_request": macs,
        "k2_sweep": {
            name: {
                size: {
                    "recall_ratio_vs_full": ranking_metrics(swept[(name, size)], truth)[
                        f"recall@{k}"
                    ]
                    / quality["full"],
                    "multiply_add_ratio_vs_full": (
                        k1 * multiply_adds_per_row(stage.snapshot) + size * ranker_macs
                    )
                    / macs["full"],
                }
                for size in sweep
            }
            for name, stage in prerankers.items()
        },
        "multiply_add_ratio_vs_full": {n: macs[n] / macs["full"] for n in prerankers},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-cascade"))
    parser.add_argument("--k1", type=int, default=1000, help="items retrieved per request")
    parser.add_argument("--k2", type=int, default=100, help="items the pre-ranker passes on")
    parser.add_argument("--k", type=int, default=50, help="items returned (recall@k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep", type=int, nargs="*", default=[50, 100, 150, 200, 300],
        help="also report recall and multiply-adds for these K2 (no extra model calls)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="use the models already trained in --workdir"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(
        args.workdir, args.k1, args.k2, args.k, args.seed, quiet=args.json,
        sweep=tuple(args.sweep), reuse=args.reuse,
    )
    if args.json:
        print(json.dumps(result, indent=1))
        return
    k = args.k
    print(f"{result['users']} users, K1 {args.k1} → K2 {args.k2} → top {k}")
    for name, recall in result[f"recall@{k}"].items():
        ms = result["model_ms_per_request"].get(name)
        print(f"  {name:12s} recall@{k} {recall:.4f}" + (f"  model {ms:.2f} ms/request" if ms
                                                          else ""))


if __name__ == "__main__":
    main()
