"""Model selection: Thompson sampling moves traffic to the better variant; a failing one leaves.

    .venv/bin/python benchmarks/selection.py --json

MovieLens-100k, per-user time split (as the demo). Two ranking models read the same requests:

  * A — logistic regression on the same features (`model.name: lr`): the weaker variant;
  * B — the example DeepFM ranker: the better one.

1. Bandit. `streamrec serve A --variant b=B --policy thompson --actions LOG`. The held-out
   positive ratings replay in time order; each becomes a /v1/rank request (the user as context,
   the rated item and 9 items the user never rated as candidates, shuffled). The user clicks
   when the served ranking puts their item first; the click goes to the action stream (a local
   log) with the request_id, and the server joins it back to the variant that answered.
   Reported: the number of requests until B has ≥ 80% of the last 500, B's share of the last
   1,000, each variant's click rate — and the clicks next to what a fixed 50/50 split and B
   alone would have earned on the same events (each variant's click rate while serving).
2. Failure. The same two variants at 50/50 under open-loop load (40 requests/s); after 3 s a
   delta poisons B (NaN in every item row). Reported: seconds until B is out of rotation
   (polled every 50 ms), requests that failed (must be 0: each call that met B's NaN scores was
   answered by A), and whether any answer carried a non-finite score.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import torch
from server_process import start_server

from streamrec import api
from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits
from streamrec.data.stream import LocalLog
from streamrec.models.persistence import load_model
from streamrec.serving.loadgen import run_load
from streamrec.train.delta_export import DeltaExporter

REPO = Path(__file__).resolve().parents[1]
CONTEXT = ("user_id", "age", "gender", "occupation", "zip_code")


def trained(workdir: Path, quiet: bool) -> dict[str, Path]:
    out = {}
    for name, model in (("a", "lr"), ("b", None)):
        cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
        if model is not None:
            cfg.model.name, cfg.model.params = model, {}
        if not (workdir / name / "model").exists():
            api.train(cfg, workdir / name, progress=not quiet)
        out[name] = workdir / name
    return out


def replay(seed: int, negatives: int = 9) -> list[tuple[dict, int]]:
    """(rank body, index of the user's item among the candidates) per held-out positive. The
    other candidates are items the user never rated, drawn by popularity — as a retriever's
    candidates would be — so that ranking them takes more than knowing what is popular."""
    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    splits = open_splits(cfg.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid())).to_pylist()
    genres = {r["item_id"]: r["genres"] for r in train.select(["item_id", "genres"]).to_pylist()}
    rated: dict[int, set[int]] = {}
    for r in train.select(["user_id", "item_id"]).to_pylist() + test:
        rated.setdefault(r["user_id"], set()).add(r["item_id"])
    items, counts = np.unique(train.column("item_id").to_numpy(), return_counts=True)
    popularity = counts / counts.sum()
    rng = np.random.default_rng(seed)
    events = []
    for r in sorted(test, key=lambda r: r["timestamp"]):
        if not r["label"] or r["item_id"] not in genres:
            continue
        others = [int(i) for i in rng.choice(items, 4 * negatives, p=popularity)
                  if i not in rated[r["user_id"]]][:negatives]
        candidates = [r["item_id"], *others]
        order = rng.permutation(len(candidates))
        body = {
            "context": {f: r[f] for f in CONTEXT},
            "candidates": [{"item_id": candidates[i], "genres": genres[candidates[i]]}
                           for i in order],
        }
        events.append((body, int(np.flatnonzero(order == 0)[0])))
    return events


def bandit(dirs: dict[str, Path], events: list, port: int, tmp: Path, window: int) -> dict:
    log = LocalLog(tmp / "actions")
    proc = start_server(dirs["a"], port, "--name", "a", "--variant", f"b={dirs['b']}",
                        "--policy", "thompson", "--actions", str(tmp / "actions"))
    served, clicked = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for i, (body, truth) in enumerate(events):
                answer = client.post("/v1/rank", json={**body, "request_id": f"r{i}"}).json()
                click = int(np.argmax(answer["scores"]["label"])) == truth
                served.append(answer["variant"])
                clicked.append(click)
                if click:
                    log.append({"request_id": f"r{i}", "item_id": 0, "action": "click",
                                "event_time": float(i)})
                if i % 20 == 19:
                    log.flush()
            shown = client.get("/v1/variants").json()
    finally:
        proc.kill()
        proc.wait()
    served_b = np.array([v == "b" for v in served])
    clicks = np.array(clicked)
    trailing = np.convolve(served_b, np.ones(window), "valid") / window
    reached = np.flatnonzero(trailing >= 0.8)
    rate = {name: float(clicks[served_b == (name == "b")].mean()) for name in ("a", "b")}
    return {
        "events": len(events),
        "requests_until_b_has_80pct_of_the_last": window,
        "requests_until_80pct": int(reached[0] + window) if reached.size else None,
        "b_share_last_1000": float(served_b[-1000:].mean()),
        "b_share_overall": float(served_b.mean()),
        "click_rate_when_serving": rate,
        "clicks": {
            "bandit": int(clicks.sum()),
            "fixed_50_50_expected": len(events) * (rate["a"] + rate["b"]) / 2,
            "b_alone_expected": len(events) * rate["b"],
        },
        "server_view": {v["name"]: {k: v[k] for k in ("served", "clicks")}
                        for v in shown["variants"]},
        "feedback": shown.get("feedback"),
    }


def failure(dirs: dict[str, Path], events: list, port: int, tmp: Path) -> dict:
    b = tmp / "b_copy"
    shutil.copytree(dirs["b"] / "model", b / "model")
    proc = start_server(dirs["a"], port, "--name", "a", "--variant", f"b={b}", "--split",
                        "a=50,b=50")
    url = f"http://127.0.0.1:{port}"
    loaded = load_model(b)
    exporter = DeltaExporter(loaded.model, b / "deltas", loaded.manifest.model_version)
    items = loaded.model.dynamic_tables()["item_id"]
    marks: dict[str, float] = {}

    def poison_and_watch() -> None:
        time.sleep(3.0)
        everything = torch.arange(1, 2000)
        items.apply_gradients(everything, torch.full((everything.numel(), items.dim), np.nan))
        exporter.export()
        marks["poisoned"] = time.time()
        with httpx.Client(base_url=url, timeout=10) as client:
            while time.time() - marks["poisoned"] < 20:
                shown = {v["name"]: v for v in client.get("/v1/variants").json()["variants"]}
                if not shown["b"]["in_rotation"]:
                    marks["out"] = time.time()
                    marks["reason"] = shown["b"]["out_reason"]
                    return
                time.sleep(0.05)

    bodies = [body for body, _ in events[:500]]
    watcher = threading.Thread(target=poison_and_watch)
    try:
        watcher.start()
        result = asyncio.run(run_load(url, 40, 12, 0, request_bodies=bodies))
        watcher.join()
        shown = httpx.get(url + "/v1/variants").json()
        finite = all(np.isfinite(s).all() for s in (
            httpx.post(url + "/v1/rank", json=body).json()["scores"]["label"]
            for body in bodies[:20]))
    finally:
        proc.kill()
        proc.wait()
    return {
        "qps": 40,
        "requests": result["sent"],
        "failed_requests": result["errors"],
        "statuses": result["statuses"],
        "seconds_to_out_of_rotation": marks["out"] - marks["poisoned"] if "out" in marks else None,
        "out_reason": marks.get("reason"),
        "b_failures_absorbed": {v["name"]: v["failures"] for v in shown["variants"]},
        "answers_after_all_finite": finite,
        "p99_ms": result["p99_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-selection"))
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--port", type=int, default=8491)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=2,
                        help="replay the held-out positives this many times (more traffic)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dirs = trained(args.workdir, quiet=args.json)
    events = replay(args.seed) * args.passes
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "bandit": bandit(dirs, events, args.port, Path(tmp), args.window),
            "failure": failure(dirs, events, args.port, Path(tmp)),
            "targets": "≥ 80% of traffic to the better variant within the stated requests; a "
                       "failing variant out of rotation within 5 s with 0 failed requests",
        }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    b, f = result["bandit"], result["failure"]
    print(f"bandit: B has ≥ 80% of the last {args.window} after {b['requests_until_80pct']} of "
          f"{b['events']} requests; click rates {b['click_rate_when_serving']}; clicks "
          f"{b['clicks']}")
    print(f"failure: out of rotation in {f['seconds_to_out_of_rotation']:.2f} s; "
          f"{f['failed_requests']} failed of {f['requests']}")


if __name__ == "__main__":
    main()
