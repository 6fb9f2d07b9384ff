"""The closed loop with simulated users, over real servers: does learning from the system's own
traffic beat the same models frozen?

    .venv/bin/python benchmarks/closed_loop.py --format ml-100k --json
    .venv/bin/python benchmarks/closed_loop.py --data ../shared/data/ml-latest-small \
        --format ml-latest-small --json
    .venv/bin/python benchmarks/closed_loop.py --data interactions.csv --format csv --json

Any user–item interactions file works (csv: columns user_id, item_id, timestamp): only ids
and times are used, and every setting below is fixed, not tuned to a dataset. Each user's
last 20% of interactions (by time) are held out: the items they would engage with. On the
first 80% this trains a two-tower retriever (user id + history → item id, 5 epochs) and, from
its candidates (K1 = 1,000), an impression-shaped DeepFM ranker (`streamrec impressions`,
1 epoch). Then `streamrec.closed_loop` runs the rounds (the user model is in its docstring):
the closed loop (impressions logged → clicks on /v1/feedback → online joiner and trainer →
deltas to the same server, for the ranker and the retriever both; `--ranker-only`: the
ranker alone), the same models frozen, the retriever's own order, popularity. `--ranker lr
--explore-share 0.1`: the closed loop's server gives that share of its slots to items its LR
ranker is unsure of (Thompson sampling on the count-based σ); the result's "explore" says how
many slots it explored and how often users clicked them; compare with `--explore-share 0`.

`--json` prints one object: rounds, users, k, ctr and recall ({closed_loop, frozen,
retrieval_only, popularity}, over the last third of the rounds), impressions_served,
impressions_logged, impressions_dropped, actions_joined, p99_ms ({logging_on, logging_off}:
the logging server and the frozen one at the same --qps). Targets (issue 31): closed-loop CTR
≥ 1.2× frozen and ≥ retrieval-only; impressions_logged == impressions_served; p99 with logging
≤ 1.1× without.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow as pa

from streamrec import api
from streamrec.closed_loop import SimulatedUsers, run_closed_loop
from streamrec.config import JobConfig, parse_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits

K1 = 1000
HISTORY = 50


def retriever_config(fmt: str, data: str | None, seed: int) -> JobConfig:
    return parse_config({
        "name": "loop_retriever",
        "schema": {
            "timestamp": "timestamp",
            "embeddings": [
                {"name": "user_id"},
                {"name": "history", "table": "item_id", "max_length": HISTORY,
                 "pooling": "mean", "missing": "empty"},
                {"name": "item_id"},
            ],
        },
        "default_table": {"dim": 32, "optimizer": "adagrad", "lr": 0.05, "init_scale": 0.05},
        "data": {"format": fmt, "train": data, "split": "per_user_time",
                 "history_length": HISTORY, "batch_size": 512},
        "model": {"name": "two_tower", "params": {
            "user_features": ["user_id", "history"], "item_features": ["item_id"],
            "hidden": [128], "out_dim": 64, "temperature": 0.05}},
        "train": {"epochs": 5, "seed": seed, "dense_lr": 0.001},
        "retrieval": {"index": "hnsw", "candidates": K1},
    })


def ranker_config(impressions: Path, seed: int, model: str = "deepfm") -> JobConfig:
    return parse_config({
        "name": "loop_ranker",
        "schema": {
            "labels": [{"name": "label"}],
            "group_id": "user_id",
            "timestamp": "timestamp",
            "dense": [{"name": "retrieval_score", "transform": "standardize"}],
            "embeddings": [{"name": "user_id"}, {"name": "item_id"}],
        },
        "default_table": {"dim": 16, "optimizer": "adagrad", "lr": 0.05, "init_scale": 0.01},
        "data": {"format": "parquet", "train": str(impressions), "batch_size": 1024,
                 "shuffle_rows": 10_000_000},
        "model": {"name": model, "params": {"hidden": [128, 64]} if model == "deepfm" else {}},
        "train": {"epochs": 1, "seed": seed, "dense_optimizer": "adam", "dense_lr": 0.001},
        "serving": {"context_features": ["user_id"]},
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="the interactions (a folder for ml-latest-small; none for "
                   "ml-100k, read from the recbole wheel)")
    p.add_argument("--format", default="ml-100k", choices=["ml-100k", "ml-latest-small", "csv"])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--users", type=int, default=100, help="users per round")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qps", type=float, default=20.0,
                   help="rate of the p99 comparison, logging on vs off (0: skip it)")
    p.add_argument("--workdir", type=Path, help="keep the models and streams here")
    p.add_argument("--ranker-only", action="store_true",
                   help="the retriever does not learn from the loop (only the ranker does)")
    p.add_argument("--ranker", default="deepfm", choices=["deepfm", "lr"],
                   help="the ranker's model (lr estimates its uncertainty: --explore-share)")
    p.add_argument("--explore-share", type=float, default=0.0,
                   help="share of the closed loop's slots explored by Thompson sampling on the "
                   "ranker's uncertainty (needs --ranker lr)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    say = (lambda _: None) if args.json else print
    work = args.workdir or Path(tempfile.mkdtemp(prefix="closed-loop-"))

    retriever = retriever_config(args.format, args.data, args.seed)
    say(f"training the two-tower retriever on {args.format} …")
    retrieval_dir = api.train(retriever, work / "retriever", progress=False).model_dir
    ranker = ranker_config(work / "impressions.parquet", args.seed, args.ranker)
    interactions = ranker.model_copy(deep=True)
    interactions.data = retriever.data
    built = api.impressions(retrieval_dir, interactions, work / "impressions.parquet", K1)
    say(f"{built['rows']:,} impressions ({built['positive_rate']:.1%} positive); the ranker …")
    ranker_dir = api.train(ranker, work / "ranker", progress=False).model_dir

    splits = open_splits(retriever.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    users = SimulatedUsers.from_split(train, test, ["user_id", "history"], HISTORY)
    result = run_closed_loop(
        ranker, ranker_dir, retrieval_dir, users,
        work / ("loop_ranker_only" if args.ranker_only else "loop"), args.rounds, args.users,
        args.k, K1, args.seed, args.qps, log=say, retriever_learns=not args.ranker_only,
        explore_share=args.explore_share,
    )
    result["data"] = args.format
    if args.json:
        print(json.dumps(result))
        return
    ctr = result["ctr"]
    print(f"CTR over the last third of {args.rounds} rounds: " + "  ".join(
        f"{arm} {value:.4f}" for arm, value in ctr.items()))
    print(f"closed loop / frozen: {ctr['closed_loop'] / max(ctr['frozen'], 1e-9):.2f}× "
          "(target ≥ 1.2×)")
    explore = result["explore"]
    if explore["share"]:
        print(f"explored {explore['slots']} slots (share {explore['share']}), clicked "
              f"{explore['clicks']} (CTR {explore['ctr']:.4f})")
    print(f"impressions served {result['impressions_served']}, logged "
          f"{result['impressions_logged']}, dropped {result['impressions_dropped']}; "
          f"actions joined {result['actions_joined']}; p99 ms {result['p99_ms']}")


if __name__ == "__main__":
    main()
