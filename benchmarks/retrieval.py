"""Retrieval: the two-tower model next to popularity and implicit's ALS, then faiss indexes.

    .venv-peers/bin/python benchmarks/retrieval.py --json     # the peers venv has `implicit`

Part 1 — quality, per-user time split (each user's last 20% of interactions are the items to
retrieve; items seen in training are excluded): recall@10/@50 and NDCG@10 on MovieLens-100k and
ml-latest-small for our two-tower, the popularity baseline, and implicit's ALS with factors /
regularisation / iterations tuned on a validation split cut the same way from the training part.

Part 2 — indexes: 100k and 1M synthetic item vectors (dim 64, clustered like learnt item
vectors); recall@100 against exact search and QPS one query at a time and in batches of 256,
for every index kind next to exact (flat) search.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.movielens import per_user_time_split
from streamrec.data.splits import open_splits
from streamrec.retrieval.evaluate import popularity_recommendations, ranking_metrics, user_items
from streamrec.retrieval.index import INDEX_TYPES, IndexParams, Retriever
from streamrec.train.two_tower import train_two_tower

REPO = Path(__file__).resolve().parents[1]


def two_tower_config(dataset: str):
    cfg = load_config(REPO / "examples" / "ml100k_two_tower.yaml")
    if dataset == "ml-small":
        cfg.data.format, cfg.data.train = "ml-latest-small", "../shared/data/ml-latest-small"
        keep = {"user_id", "history", "item_id", "genres"}
        cfg.schema_.embeddings = [f for f in cfg.schema_.embeddings if f.name in keep]
        cfg.model.params["user_features"] = ["user_id", "history"]
    return cfg


def als(
    train: pa.Table, test: pa.Table, factors: int, reg: float, iters: int, seed: int = 0
) -> dict[str, float]:
    import implicit
    from scipy.sparse import csr_matrix

    users = np.unique(train["user_id"].to_numpy())
    items = np.unique(np.concatenate([train["item_id"].to_numpy(), test["item_id"].to_numpy()]))
    u_index = {u: i for i, u in enumerate(users.tolist())}
    i_index = {v: i for i, v in enumerate(items.tolist())}
    rows = [u_index[u] for u in train["user_id"].to_pylist()]
    cols = [i_index[v] for v in train["item_id"].to_pylist()]
    matrix = csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items))
    )
    model = implicit.als.AlternatingLeastSquares(
        factors=factors, regularization=reg, iterations=iters, random_state=seed
    )
    model.fit(matrix, show_progress=False)
    relevant = {u: set(v) for u, v in user_items(test).items() if u in u_index}
    ids, _ = model.recommend(
        np.array([u_index[u] for u in relevant]),
        matrix[[u_index[u] for u in relevant]],
        N=50,
        filter_already_liked_items=True,
    )
    recs = {u: [items[j] for j in row] for u, row in zip(relevant, ids, strict=True)}
    return ranking_metrics(recs, relevant)


def quality(dataset: str) -> dict:
    cfg = two_tower_config(dataset)
    result, _ = train_two_tower(cfg, Path("/tmp") / f"tt-bench-{dataset}", progress=False)
    ours = {k: v for k, v in result["metrics"].items() if not k.startswith("baseline")}
    splits = open_splits(cfg.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    seen = user_items(train)
    relevant = {u: set(v) for u, v in user_items(test).items() if u in seen}
    popularity = ranking_metrics(
        popularity_recommendations(train, list(relevant), 50, seen), relevant
    )
    out = {"two_tower": ours, "popularity": popularity}
    try:
        fit, valid = per_user_time_split(train, 0.2)
        grid = list(itertools.product([32, 64, 128], [0.01, 0.1, 1.0], [15]))
        scores = {g: als(fit, valid, *g)["recall@50"] for g in grid}
        best = max(scores, key=scores.get)
        out["als_tuned"] = {
            **als(train, test, *best),
            "params": {"factors": best[0], "regularization": best[1], "iterations": best[2]},
        }
        out["als_defaults"] = als(train, test, 100, 0.01, 15)
    except ImportError as e:
        out["als_tuned"] = {"skipped": f"implicit not importable ({e})"}
    out["recall@50_vs_popularity"] = ours["recall@50"] / popularity["recall@50"]
    return out


def synthetic_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(256, dim))
    x = centers[rng.integers(0, 256, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def index_benchmark(n: int, dim: int = 64, queries: int = 500) -> dict:
    x = synthetic_vectors(n, dim)
    q = synthetic_vectors(queries, dim, seed=1)
    ids = np.arange(n, dtype=np.int64)
    results = {}
    exact_ids = None
    for kind in ("flat",) + tuple(k for k in INDEX_TYPES if k != "flat"):
        params = IndexParams(
            index_type=kind,
            nlist=int(4 * np.sqrt(n)),
            nprobe=16,
            ef_search=256,
            ef_construction=200,
        )
        r = Retriever(dim, params)
        t0 = time.perf_counter()
        r.build(ids, x)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(100):
            r.search(q[i : i + 1], 100)
        single_qps = 100 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        got, _ = r.search(q, 100)
        batched_qps = queries / (time.perf_counter() - t0)
        if exact_ids is None:
            exact_ids = got
        recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(exact_ids, got, strict=True)])
        results[kind] = {
            "recall@100": float(recall),
            "qps_single": single_qps,
            "qps_batched": batched_qps,
            "build_s": build_s,
        }
        if kind == "ivf_flat":  # the recall / speed trade-off: more clusters probed
            for nprobe in (48, 96):
                r._inner.nprobe = nprobe
                t0 = time.perf_counter()
                for i in range(100):
                    r.search(q[i : i + 1], 100)
                single = 100 / (time.perf_counter() - t0)
                got, _ = r.search(q, 100)
                rec = np.mean(
                    [len(set(a) & set(b)) / 100 for a, b in zip(exact_ids, got, strict=True)]
                )
                results[f"ivf_flat_nprobe{nprobe}"] = {
                    "recall@100": float(rec),
                    "qps_single": single,
                    "qps_batched": None,
                    "build_s": build_s,
                }
    for kind in list(results):
        results[kind]["single_speedup_vs_exact"] = (
            results[kind]["qps_single"] / results["flat"]["qps_single"]
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-small"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = {
        "quality": {d: quality(d) for d in args.datasets if d != "none"},
        "indexes": {str(n): index_benchmark(n) for n in args.sizes},
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
