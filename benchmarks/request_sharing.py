"""Request-level sharing: a ranker's first layer over the request's columns once per request
(`Batch.context`, models/request_sharing.py) vs once per row, same model, same rows.

    .venv/bin/python benchmarks/request_sharing.py --json [--model deepfm --model dlrm]

A DeepFM (or a DLRM: bottom MLP 64 over the per-row dense column, the top MLP's first layer
the "first layer" below; the request's 8 vectors' 28 dot products and their share of the top
layer once per request) whose requests give 8 of its 10 id features once (a user with a
rich profile — the shape XDL and YouTube's ranker describe — and two item ids), dim 16, one
dense column per row; batches of R requests × C candidates, as the server's batcher forms
them. Peer: the same batch without its request context (every row computes everything: the
code before).
Reports the median time per batch of alternating calls and the ratio, for a small and a
wide first layer, and checks the scores agree (to 1e-5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pyarrow as pa
import torch

from streamrec.config import JobConfig
from streamrec.models.registry import build_model

USER = [f"u{i}" for i in range(8)]  # the request's id features
PARAMS = {  # a model's parameters for a first (top) layer of `hidden`
    "deepfm": lambda hidden: {"hidden": hidden},
    "dlrm": lambda hidden: {"bottom": [64], "top": hidden},
}
ITEM = ["item_id", "item_tag"]


def config(hidden: list[int], model: str = "deepfm") -> JobConfig:
    cfg = JobConfig.model_validate({
        "name": "sharing",
        "schema": {
            "labels": [{"name": "click"}],
            "dense": [{"name": "price"}],
            "embeddings": [{"name": f} for f in USER + ITEM],
        },
        "default_table": {"dim": 16, "optimizer": "adagrad", "lr": 0.05},
        "model": {"name": model, "params": PARAMS[model](hidden)},
    })
    cfg.schema_ = cfg.schema.fit(rows([4], 0))
    return cfg


def rows(sizes: list[int], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    request = np.repeat(np.arange(len(sizes)), sizes)
    columns = {"click": rng.integers(0, 2, n).astype(np.float32), "price": rng.random(n)}
    for f in USER:
        columns[f] = rng.integers(0, 10_000, len(sizes))[request]  # one value a request
    for f in ITEM:
        columns[f] = rng.integers(0, 50_000, n)
    return pa.table(columns)


def timed(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(
    hidden: list[int], requests: int, candidates: int, rounds: int, model_name: str = "deepfm"
) -> dict:
    cfg = config(hidden, model_name)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    sizes = [candidates] * requests
    table = rows(sizes, 1)
    model.train()  # admit the ids, so lookups find rows
    model(cfg.schema.encode(table))
    model.eval()
    plain = cfg.schema.encode(table, with_labels=False)
    shared = cfg.schema.share_requests(plain, sizes, USER)
    with torch.inference_mode():
        a, b = model.predict(shared), model.predict(plain)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), float((a - b).abs().max())
        calls = max(3, 20_000 // (requests * candidates))
        ours, peer = [], []
        for _ in range(rounds):
            ours.append(timed(lambda: model.predict(shared), calls))
            peer.append(timed(lambda: model.predict(plain), calls))
    o, p = statistics.median(ours), statistics.median(peer)
    return {"model": model_name, "hidden": hidden, "requests": requests, "candidates": candidates,
            "ours_ms": 1e3 * o, "peer_ms": 1e3 * p, "speedup": p / o,
            "max_abs_diff": float((a - b).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--model", choices=sorted(PARAMS), action="append",
                        help="the ranker (repeatable; default: deepfm)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [
        measure(hidden, r, c, args.rounds, model_name)
        for model_name in args.model or ["deepfm"]
        for hidden in ([128, 64], [512, 256])
        for r, c in ((1, 100), (5, 100), (1, 1000))
    ]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(f"{r['model']} hidden {r['hidden']}, {r['requests']} × {r['candidates']}: "
              f"shared {r['ours_ms']:.3f} ms, unshared {r['peer_ms']:.3f} ms, "
              f"{r['speedup']:.2f}×")


if __name__ == "__main__":
    main()
