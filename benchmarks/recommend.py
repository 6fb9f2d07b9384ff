"""/v1/recommend of the three-stage server (retrieve 1,000 → pre-rank → rank 100): this code
against another checkout ("today's code"), same models, same machine, alternating.

    git worktree add /tmp/baseline <commit>     # the code to compare with
    .venv/bin/python benchmarks/recommend.py --baseline-src /tmp/baseline/src --json

MovieLens-100k: the ranker (DeepFM), retriever (two-tower) and pre-ranker (COLD) of
`benchmarks/overload.py` (trained once per --workdir). Requests replay test users, P(r-th most
active) ∝ r^−0.8, their seen items excluded; prediction cache off. Per code tree and repeat:

  * server CPU per request: 300 sequential requests after 20 of warm-up (HTTP included);
  * capacity: the highest --ladder rate whose p99 ≤ 50 ms with no errors (open-loop Poisson
    arrivals from the same box), and the p99 at that rate.

Reports medians over --repeats and the ratios ours / peer. Target (issue 33): capacity ≥ 1.5×
the 30 QPS of issue 21's measurement; its p99 recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import httpx
from overload import SLO_MS, load, process_cpu_s, replayed_traffic, trained
from server_process import start_server

PORT = 8473


def serve(dirs: dict[str, Path], src: Path | None):
    return start_server(
        dirs["ranker"], PORT, "--retriever", str(dirs["retriever"]), "--preranker",
        str(dirs["preranker"]), "--retrieve", "1000", "--prerank-keep", "100", src=src,
    )


def measure(dirs: dict[str, Path], src: Path | None, bodies: list[dict], ladder: list[float],
            seconds: float) -> dict:
    proc = serve(dirs, src)
    url = f"http://127.0.0.1:{PORT}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for body in bodies[:20]:
                client.post("/v1/recommend", json=body).raise_for_status()
            started = process_cpu_s(proc.pid)
            for body in bodies[20:320]:
                client.post("/v1/recommend", json=body).raise_for_status()
            cpu_ms = 1000 * (process_cpu_s(proc.pid) - started) / 300
        capacity, at_capacity = 0.0, None
        for qps in ladder:
            r = load(url, qps, seconds, bodies)
            if r["p99_ms"] > SLO_MS or r["errors"]:
                break
            capacity, at_capacity = qps, r
        return {"cpu_ms_per_request": cpu_ms, "capacity_qps": capacity,
                "p99_ms_at_capacity": at_capacity["p99_ms"] if at_capacity else None}
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True,
                        help="the src/ folder of the checkout to compare with")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-overload"))
    parser.add_argument("--ladder", type=float, nargs="*",
                        default=[20, 30, 40, 50, 60, 70, 80, 90, 100])
    parser.add_argument("--seconds", type=float, default=8.0, help="per load window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dirs = trained(args.workdir, quiet=args.json)
    bodies, _ = replayed_traffic(4000, 10, seed=0)
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for i in range(args.repeats):
        for name, src in (("ours", None), ("peer", args.baseline_src)):
            r = measure(dirs, src, bodies, args.ladder, args.seconds)
            runs[name].append(r)
            print(f"[{i + 1}/{args.repeats}] {name}: {r}", file=sys.stderr)
    report: dict = {"runs": runs}
    for key in ("cpu_ms_per_request", "capacity_qps"):
        ours = statistics.median(r[key] for r in runs["ours"])
        peer = statistics.median(r[key] for r in runs["peer"])
        report[key] = {"ours": ours, "peer": peer, "ratio": ours / peer if peer else None}
    p99 = [r["p99_ms_at_capacity"] for r in runs["ours"] if r["p99_ms_at_capacity"]]
    report["ours_p99_ms_at_capacity"] = statistics.median(p99) if p99 else None
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
