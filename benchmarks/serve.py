"""Serving under open-loop load: batching on vs off, then freshness under load.

    python benchmarks/serve.py --json [--model runs/ml100k]

1. Trains the MovieLens-100k DeepFM ranker (unless --model names one), starts `streamrec serve`
   with the prediction cache off (every row is computed), and finds the highest Poisson request
   rate whose p99 stays ≤ 50 ms with no errors, with dynamic batching on and with it off
   (max_batch_rows=1, max_delay_ms=0): 100 candidates per request, load generator on the same
   2-core machine.
   With --baseline-src, another checkout's server is searched beside ours ("today's code"),
   --repeats rounds alternating, and the ratio of the medians reported (`vs_baseline`).
   --cpu-at QPS measures only the server's CPU per request at that load instead (ours, and
   with --baseline-src the baseline, alternating): steadier than the search's levels.
2. At 70% of the batching-on maximum: a steady window, then 10 deltas and one full model reload
   while the load runs, in --freshness-rounds rounds on fresh servers. Reports failed requests,
   p99 during the swaps vs steady (per round and the median), and the server's peak RSS during
   the reload next to the model's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from server_process import start_server

from streamrec.config import load_config
from streamrec.models.persistence import load_model, save_model
from streamrec.serving.loadgen import run_load
from streamrec.train.delta_export import DeltaExporter
from streamrec.train.job import run_training

REPO = Path(__file__).resolve().parents[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def max_qps(url: str, levels: list[float], seconds: float, candidates: int) -> tuple[float, list]:
    asyncio.run(run_load(url, 5, 3, candidates))  # warm-up: compile kernels, fill allocators
    best, trace = 0.0, []
    for qps in levels:
        passed = False
        for _attempt in range(2):  # a level fails only if it fails twice (a shared, noisy box)
            r = asyncio.run(run_load(url, qps, seconds, candidates))
            trace.append(
                {k: r[k] for k in ("target_qps", "achieved_qps", "p50_ms", "p99_ms", "errors")}
            )
            if r["errors"] == 0 and r["p99_ms"] <= 50.0:
                best, passed = r["achieved_qps"], True
                break
        if not passed:
            break
    return best, trace


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(
    run: Path, qps: float, seconds: float, candidates: int, src: Path | None
) -> dict:
    """A fresh server (of `src`, or ours) under `qps` for `seconds`: its CPU milliseconds per
    answered request and the load's p99 — a steadier measure of a request's cost than the
    QPS search, whose levels are 1.25× apart."""
    proc = start_server(run, 8931, src=src)
    try:
        asyncio.run(run_load("http://127.0.0.1:8931", 50, 3, candidates))  # warm-up
        before = cpu_seconds(proc.pid)
        r = asyncio.run(run_load("http://127.0.0.1:8931", qps, seconds, candidates))
        used = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait()
    return {"cpu_ms": 1e3 * used / max(r["ok"], 1), "p99_ms": r["p99_ms"], "errors": r["errors"]}


def _churn(run_dir: str, tmp: str, seconds: float, ready, go, finished) -> None:
    """In its own process: stage the next full model (written before the load window, as a
    trainer on another machine would), then on `go` write 10 deltas 0.1·seconds apart and
    swap the staged model in; exit only on `finished` (after the window: an exiting Python
    process burns a core for a moment, which on this box would be timed as server latency)."""
    run = Path(run_dir)
    loaded = load_model(run)
    staged = Path(tmp) / "staged_model"
    save_model(staged, loaded.model, loaded.config, {"input_kinds": loaded.manifest.input_kinds})
    table = loaded.model.dynamic_tables()["item_id"]
    # Warm up (compile the optimizer and export kernels) before the window: a trainer is warm,
    # and on this shared 2-core box a cold writer's JIT compilation would be timed as the
    # server's latency.
    warmup = DeltaExporter(loaded.model, Path(tmp) / "warmup_deltas", 0)
    table.apply_gradients(torch.arange(1, 51), torch.zeros(50, table.dim))
    warmup.export()
    exporter = DeltaExporter(loaded.model, run / "deltas", loaded.manifest.model_version)
    ready.set()
    go.wait()
    for i in range(10):
        ids = torch.arange(1 + 50 * i, 51 + 50 * i)
        table.apply_gradients(ids, 0.01 * torch.randn(50, table.dim))
        exporter.export()
        time.sleep(seconds / 20)
    retired = run / ".model.retired"
    (run / "model").rename(retired)
    staged.rename(run / "model")
    shutil.rmtree(retired)
    finished.wait(600)


def freshness_round(
    run: Path, tmp: Path, qps: float, seconds: float, candidates: int, seed: int
) -> dict:
    """One server: a steady window, then 10 deltas and one full reload under the same load."""
    tmp.mkdir(parents=True)
    proc = start_server(run, 8932)
    url = "http://127.0.0.1:8932"
    try:
        asyncio.run(run_load(url, 5, 3, candidates))  # warm-up
        # The deltas and the next full model come from another process, as from a trainer:
        # the load generator's own process stays free for sending and timing requests.
        spawn = multiprocessing.get_context("spawn")
        ready, go, finished = spawn.Event(), spawn.Event(), spawn.Event()
        writer = spawn.Process(
            target=_churn, args=(str(run), str(tmp), seconds, ready, go, finished)
        )
        writer.start()
        if not ready.wait(300):
            raise RuntimeError("the delta writer did not start")
        steady = asyncio.run(run_load(url, qps, seconds, candidates, seed=2 * seed))
        model_bytes = sum(p.stat().st_size for p in (run / "model").rglob("*") if p.is_file())
        baseline_rss = rss_bytes(proc.pid)
        peak = {"rss": baseline_rss}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], rss_bytes(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        go.set()
        swaps = asyncio.run(run_load(url, qps, seconds * 1.5, candidates, seed=2 * seed + 1))
        finished.set()
        writer.join()
        time.sleep(2)
        stop.set()
        sampler.join()
        info = httpx.get(url + "/v1/model").json()
    finally:
        proc.terminate()
        proc.wait()
    return {
        "steady_p99_ms": steady["p99_ms"],
        "swap_p99_ms": swaps["p99_ms"],
        "p99_ratio": swaps["p99_ms"] / steady["p99_ms"],
        "failed_requests": steady["errors"] + swaps["errors"],
        "deltas_applied": info.get("deltas_applied"),
        "reloads": info.get("reloads"),
        "model_bytes": model_bytes,
        "rss_before_bytes": baseline_rss,
        "rss_peak_bytes": peak["rss"],
        # The old model stays loaded until the swap: the models' share of the peak is
        # (one model) + (growth); ≤ 2.2× the model's size is the target.
        "models_at_peak_over_model_size": 1 + (peak["rss"] - baseline_rss) / model_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, help="a run directory (default: train one)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per load level")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument(
        "--inflate-rows",
        type=int,
        default=0,
        help="add this many rows to the item table first, so the reload moves a "
        "model of realistic size (RSS measurement)",
    )
    ap.add_argument(
        "--freshness-qps",
        type=float,
        default=None,
        help="skip the QPS search and run only the freshness part at this load",
    )
    ap.add_argument(
        "--freshness-rounds",
        type=int,
        default=3,
        help="freshness rounds (fresh server each); the median p99 ratio is the result",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout's src/ (git worktree add /tmp/baseline <commit>): its server's "
        "max QPS is searched beside ours, alternating, and the ratio reported",
    )
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the QPS search")
    ap.add_argument(
        "--cpu-at",
        type=float,
        default=None,
        help="only measure the server's CPU per request at this load (with --baseline-src: "
        "ours and the baseline alternating, --repeats rounds), then exit",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    run = args.model
    if run is None:
        cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
        run = tmp / "run"
        run_training(cfg, run, progress=False)
    if args.inflate_rows:
        loaded = load_model(run)
        table = loaded.model.dynamic_tables()["item_id"]
        fids = np.arange(10**9, 10**9 + args.inflate_rows, dtype=np.int64)
        for lo in range(0, len(fids), 1 << 20):
            part = fids[lo : lo + (1 << 20)]
            table.upsert(
                part,
                0.01
                * np.random.default_rng(lo)
                .standard_normal((len(part), table.dim))
                .astype(np.float32),
            )
        save_model(
            run / "model",
            loaded.model,
            loaded.config,
            {"input_kinds": loaded.manifest.input_kinds},
        )
        del loaded, table
    if args.cpu_at:
        sides = [("ours", None)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
        rounds: dict[str, list[dict]] = {name: [] for name, _ in sides}
        for _ in range(args.repeats):
            for name, src in sides[::-1]:
                rounds[name].append(
                    cpu_per_request(run, args.cpu_at, args.seconds, args.candidates, src)
                )
        cpu = {name: float(np.median([r["cpu_ms"] for r in rs])) for name, rs in rounds.items()}
        report = {"qps": args.cpu_at, "candidates": args.candidates, "rounds": rounds,
                  "cpu_ms_per_request": cpu}
        if args.baseline_src:
            report["cpu_vs_baseline"] = cpu["ours"] / cpu["baseline"]
        print(json.dumps(report) if args.json else json.dumps(report, indent=2))
        return
    report: dict = {
        "candidates": args.candidates,
        "cpu_cores": os.cpu_count(),
        "inflate_rows": args.inflate_rows,
    }
    levels = [10, 20, 40, 80, 160, 260, 400, 500, 640, 800, 1000, 1250, 1600, 1800, 2000]
    levels += [2250, 2500, 2800, 3200, 3600, 4000, 4500, 5000]
    modes: list[tuple[str, tuple[str, ...], Path | None]] = []
    if not args.freshness_qps:
        modes = [("batching_off", ("--max-batch-rows", "1", "--max-delay-ms", "0"), None),
                 ("batching_on", (), None)]
        if args.baseline_src:
            modes.append(("baseline", (), args.baseline_src))
    for _ in range(args.repeats):
        for name, extra, src in modes:
            proc = start_server(run, 8931, *extra, src=src)
            try:
                best, trace = max_qps(
                    "http://127.0.0.1:8931", levels, args.seconds, args.candidates
                )
            finally:
                proc.terminate()
                proc.wait()
            found = report.setdefault(name, {"runs": [], "levels": []})
            found["runs"].append(best)
            found["levels"].append(trace)
            found["max_qps_at_p99_50ms"] = float(np.median(found["runs"]))
    if modes:
        report["batching_speedup"] = report["batching_on"]["max_qps_at_p99_50ms"] / max(
            report["batching_off"]["max_qps_at_p99_50ms"], 1e-9
        )
    if args.baseline_src and modes:
        report["vs_baseline"] = report["batching_on"]["max_qps_at_p99_50ms"] / max(
            report["baseline"]["max_qps_at_p99_50ms"], 1e-9
        )

    # Freshness under 70% load: steady window, then 10 deltas and a full reload — repeated on
    # fresh servers, since one p99 over a few seconds on a shared 2-core box swings by ~2×.
    qps = args.freshness_qps or max(1.0, 0.7 * report["batching_on"]["max_qps_at_p99_50ms"])
    rounds = [
        freshness_round(run, tmp / f"round{i}", qps, args.seconds, args.candidates, seed=i)
        for i in range(args.freshness_rounds)
    ]
    ratios = [r["p99_ratio"] for r in rounds]
    report["freshness_under_load"] = {  # --freshness-rounds 0: none measured, nulls
        "qps": qps,
        "p99_ratio_median": float(np.median(ratios)) if ratios else None,
        "p99_ratios": ratios,
        "failed_requests": sum(r["failed_requests"] for r in rounds),
        "models_at_peak_over_model_size": max(
            (r["models_at_peak_over_model_size"] for r in rounds), default=None
        ),
        "rounds": rounds,
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
