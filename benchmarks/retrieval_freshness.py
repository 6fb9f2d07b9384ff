"""Serving latency while the retriever learns: /v1/recommend p99 with a retriever delta arriving
every second (each one re-embeds and re-indexes the catalog on the server, then swaps towers,
index and user-vector cache) against the same server with none arriving.

    .venv/bin/python benchmarks/retrieval_freshness.py --json

One server (a DeepFM ranker and a two-tower retriever on MovieLens-100k, 1 epoch each) takes
open-loop Poisson load at --qps; the phases alternate quiet / learning --repeats times, so both
see the same host noise. In a learning phase a thread here plays the retriever's online trainer:
every second it nudges a copy of the towers (dense weights and 200 item rows) and writes a delta
with the dense weights. Reported: the median p99 (and p50) of each kind of phase, their ratio
(target: learning ≤ 1.1× quiet, the issue's bound for any change to serving), the deltas served
and the server's last re-index time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
from pathlib import Path

import httpx
import torch

from streamrec import api
from streamrec.closed_loop import ServerProcess
from streamrec.config import load_config
from streamrec.models.persistence import load_model
from streamrec.serving.loadgen import run_load
from streamrec.store import find_model_dir
from streamrec.train.delta_export import DeltaExporter

REPO = Path(__file__).resolve().parents[1]


class RetrieverDeltas(threading.Thread):
    """A stand-in for the retriever's online trainer: a delta every `every` seconds while
    `on` is set."""

    def __init__(self, retriever_dir: Path, deltas: Path, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        loaded = load_model(retriever_dir)
        self.model = loaded.model.eval()
        self.exporter = DeltaExporter(self.model, deltas, loaded.manifest.model_version)
        self.every = every
        self.on = threading.Event()
        self.done = threading.Event()
        self.generator = torch.Generator().manual_seed(0)

    def run(self) -> None:
        while not self.done.wait(self.every):
            if not self.on.is_set():
                continue
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=self.generator))
                items = self.model.dynamic_tables()["item_id"]
                fids = items.live_fids()[:200]
                rows = items.gather_rows(items.live_rows()[:200])
                noise = torch.randn(rows.shape, generator=self.generator).numpy()
                items.upsert(fids, rows + 1e-3 * noise)
            self.exporter.export(force_dense=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--qps", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=8.0, help="per phase")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    say = (lambda _: None) if args.json else print
    work = args.workdir or Path(tempfile.mkdtemp(prefix="retrieval-freshness-"))

    say("training the ranker and the retriever (1 epoch each) …")
    ranker = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    ranker.train.epochs = 1
    ranker_dir = api.train(ranker, work / "ranker", progress=False).model_dir
    retriever = load_config(REPO / "examples" / "ml100k_two_tower.yaml")
    retriever.train.epochs = 1
    retriever_dir = api.train(retriever, work / "retriever", progress=False).model_dir

    deltas = work / "retriever_deltas"
    writer = RetrieverDeltas(find_model_dir(retriever_dir), deltas)
    server = ServerProcess(
        [str(ranker_dir), "--retriever", str(retriever_dir), "--retrieve", "200",
         "--deltas", str(work / "no_deltas"), "--retriever-deltas", str(deltas)],
        work / "server.log",
    )
    bodies = [
        {"user": {"user_id": u, "age": 20 + u % 40, "gender": "F"}, "k": 10}
        for u in range(1, 301)
    ]
    results: dict[str, list[dict]] = {"quiet": [], "learning": []}
    writer.start()
    try:
        for r in range(args.repeats):
            for phase in ("quiet", "learning"):
                if phase == "learning":
                    writer.on.set()
                report = asyncio.run(run_load(
                    server.url, args.qps, args.seconds, 0, endpoint="/v1/recommend",
                    request_bodies=bodies, seed=r,
                ))
                writer.on.clear()
                results[phase].append(report)
                say(f"  {phase:8s} p50 {report['p50_ms']:.1f} ms  p99 {report['p99_ms']:.1f} ms")
        served = httpx.get(server.url + "/v1/model", timeout=30).json()["retrieval"]
    finally:
        writer.done.set()
        server.stop()
    p99 = {k: statistics.median(r["p99_ms"] for r in v) for k, v in results.items()}
    p50 = {k: statistics.median(r["p50_ms"] for r in v) for k, v in results.items()}
    out = {
        "qps": args.qps,
        "p99_ms": p99,
        "p50_ms": p50,
        "p99_ratio_learning_vs_quiet": p99["learning"] / p99["quiet"],
        "deltas_written": writer.exporter.version,
        "deltas_served": served["delta_version"],
        "last_reindex": served["last_reindex"],
        "errors": sum(r.get("errors", 0) for v in results.values() for r in v),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"p99 learning {p99['learning']:.1f} ms vs quiet {p99['quiet']:.1f} ms: "
          f"{out['p99_ratio_learning_vs_quiet']:.2f}× (target ≤ 1.1×); "
          f"{out['deltas_served']} of {out['deltas_written']} deltas served, last re-index "
          f"{served['last_reindex']}")


if __name__ == "__main__":
    main()
