"""Tables larger than memory (issue 20): tiered vs all-in-DRAM, 200M ids on this box, a soak.

    python benchmarks/scale.py ratio --rows 20000000 --json      # same run, A B A B windows
    python benchmarks/scale.py big --rows 200000000 --budget 4GiB --json
    python benchmarks/scale.py soak --events 50000000 --days 10 --ttl-days 3 --json

The workload is `SyntheticCriteo` (src/streamrec/data/synthetic.py): 26 id features with Zipf
1.05 per feature, Criteo Kaggle's cardinalities scaled to `--rows` distinct ids in total, a
hot set that drifts (new ids keep arriving), and — for the soak — event times with a day/night
rate. The model is the DLRM of benchmarks/train.py (dim 16, row-wise Adagrad, batch 2048).

ratio  Both models' tables are filled with every id of the vocabulary first (the tiered one
       then holds `--budget-share` of each table's rows in DRAM, the rest on disk), then train
       on the same fresh batches in alternating windows; samples/s medians, their ratio, and
       the tiered tables' DRAM hit rate over the timed steps.
big    One tiered model: fill `--rows` ids, train, checkpoint (save_model), restart from the
       checkpoint in a new process, serve a few requests; max RSS, bytes on disk per id, time
       to checkpoint and to restart.
soak   Online-style training over `--days` simulated days with `ttl_seconds` = `--ttl-days`:
       RSS and samples/s per simulated day, and a plot (benchmarks/scale_soak.png).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from streamrec.config import parse_config
from streamrec.data.records import CRITEO_DENSE, CRITEO_SPARSE
from streamrec.data.synthetic import SyntheticCriteo
from streamrec.models import build_model
from streamrec.table_config import parse_bytes
from streamrec.train.trainer import Trainer

BATCH = 2048
DIM = 16
# Criteo Kaggle's cardinalities (33.8M in all); scaled to the requested number of ids.
KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def vocabulary(total_ids: int) -> list[int]:
    """Per-feature vocabulary sizes summing to ~total_ids, in Criteo's proportions (small
    features keep their size: a 3-valued feature stays 3-valued)."""
    scale = total_ids / sum(KAGGLE)
    return [max(1000, int(k * scale)) if k > 1000 else k for k in KAGGLE]


def dlrm_config(
    tables: dict | None = None,
    ttl: float | None = None,
    mlp: list[int] | None = None,
    timestamp: bool = False,
):
    default = {"dim": DIM, "optimizer": "rowwise_adagrad", "lr": 0.05, "ttl_seconds": ttl}
    mlp = mlp or [512, 256]
    return parse_config(
        {
            "schema": {
                **({"timestamp": "timestamp"} if timestamp else {}),
                "labels": [{"name": "label"}],
                "dense": [{"name": c, "transform": "log1p"} for c in CRITEO_DENSE],
                "embeddings": [
                    {"name": c, "missing": "empty", "kind": "int"} for c in CRITEO_SPARSE
                ],
            },
            "default_table": default,
            "tables": {name: {**default, **cfg} for name, cfg in (tables or {}).items()},
            "model": {"name": "dlrm", "params": {"bottom": mlp, "top": mlp}},
            "train": {"dense_optimizer": "adagrad", "dense_lr": 0.05, "evict_every_steps": 20},
        }
    )


def tiered_tables(vocab: list[int], budget_bytes: int, path: Path) -> dict:
    """Each feature's table gets a share of the budget proportional to its vocabulary."""
    total = sum(vocab)
    return {
        name: {"storage": {"memory_budget": max(1 << 16, budget_bytes * v // total),
                           "path": str(path)}}
        for name, v in zip(CRITEO_SPARSE, vocab, strict=True)
    }


def fill(
    model, gen: SyntheticCriteo, now: float, chunk: int = 1 << 18, progress: bool = False
) -> float:
    """Give every id of the vocabulary a row (tiered tables write the excess down as they
    go) → seconds taken."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    tables = model.dynamic_tables()
    bar = tqdm(total=sum(gen.vocab_sizes), unit=" ids", disable=not progress, file=sys.stderr)
    for c, name in enumerate(CRITEO_SPARSE):
        table = tables[name]
        for lo in range(0, gen.vocab_sizes[c], chunk):
            ranks = np.arange(lo, min(lo + chunk, gen.vocab_sizes[c]))
            table.lookup(torch.from_numpy(gen.vocabulary_fids(c, ranks)), now=now)
            if table.has_disk_tier:
                table.trim()
            bar.update(ranks.shape[0])
    bar.close()
    return time.perf_counter() - t0


def batches(gen: SyntheticCriteo, schema, count: int, first_row: int) -> list:
    out = []
    for rb in gen.record_batches(count * BATCH, BATCH, first_row=first_row):
        out.append(schema.encode(pa.Table.from_batches([rb])))
    return out


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def hit_rate(model) -> float:
    tiered = [t for t in model.dynamic_tables().values() if t.has_disk_tier]
    asked = sum(t.ids_resolved for t in tiered)
    return 1.0 - sum(t.dram_misses for t in tiered) / asked if asked else 1.0


def reset_hits(model) -> None:
    for t in model.dynamic_tables().values():
        if t.has_disk_tier:
            t.ids_resolved = t.dram_misses = 0


def close(*models) -> None:
    """Close tiered tables (their stores) before their folders go."""
    for model in models:
        for t in model.dynamic_tables().values():
            if t.has_disk_tier:
                t.close()


def disk_bytes(model) -> int:
    return sum(t.cold.disk_bytes() for t in model.dynamic_tables().values() if t.has_disk_tier)


# ---------------------------------------------------------------------------- ratio
def run_ratio(args) -> dict:
    vocab = vocabulary(args.rows)
    gen = SyntheticCriteo(seed=0, vocab_sizes=vocab)
    work = Path(tempfile.mkdtemp(prefix="scale_ratio_", dir=args.workdir))
    models = []
    try:
        row_bytes = 4 * (DIM + 1) + 52
        budget = int(args.budget_share * sum(vocab) * row_bytes)
        plain_cfg = dlrm_config()
        tiered_cfg = dlrm_config(tiered_tables(vocab, budget, work / "tiers"))
        torch.manual_seed(0)
        plain = build_model(plain_cfg.model, plain_cfg.schema, plain_cfg.table_configs())
        torch.manual_seed(0)
        tiered = build_model(tiered_cfg.model, tiered_cfg.schema, tiered_cfg.table_configs())
        models.append(tiered)
        fill_plain = fill(plain, gen, now=0)
        fill_tiered = fill(tiered, gen, now=0)
        print(f"filled {sum(vocab):,} ids: DRAM {fill_plain:.0f} s, tiered {fill_tiered:.0f} s"
              f"; tiered disk {disk_bytes(tiered) / sum(vocab):.1f} B/id", file=sys.stderr)
        sides = {
            "dram": Trainer(plain, plain_cfg, progress=False),
            "tiered": Trainer(tiered, tiered_cfg, progress=False),
        }
        n = args.warmup + args.windows * args.steps
        stream = batches(gen, plain_cfg.schema, n, first_row=10_000_000)
        ahead = args.prefetch
        for trainer in sides.values():  # warm-up: kernels compiled, hot set formed
            for i in range(args.warmup):
                trainer.train_step(stream[i], stream[i + 1] if ahead else None)
        reset_hits(tiered)
        rates: dict[str, list[float]] = {"dram": [], "tiered": []}
        for w in range(args.windows):
            lo = args.warmup + w * args.steps
            for name, trainer in sides.items():
                t0 = time.perf_counter()
                for i in range(lo, lo + args.steps):
                    upcoming = stream[i + 1] if ahead and i + 1 < n else None
                    trainer.train_step(stream[i], upcoming)
                rates[name].append(args.steps * BATCH / (time.perf_counter() - t0))
        ratios = [t / d for t, d in zip(rates["tiered"], rates["dram"], strict=True)]
        return {
            "ids": sum(vocab),
            "budget_share": args.budget_share,
            "budget_bytes": budget,
            "dram_samples_per_s": statistics.median(rates["dram"]),
            "tiered_samples_per_s": statistics.median(rates["tiered"]),
            "ratio": statistics.median(ratios),
            "ratio_per_window": ratios,
            "prefetch": ahead,
            "tiered_hit_rate": hit_rate(tiered),
            "tiered_disk_bytes_per_id": disk_bytes(tiered) / sum(vocab),
            "tiered_dram_rows": sum(t.hot_rows for t in tiered.dynamic_tables().values()),
            "max_rss_gib": max_rss_gib(),
        }
    finally:
        close(*models)
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------- big
def run_big(args) -> dict:
    """Fill, train, checkpoint; then restart and serve from the checkpoint in new processes."""
    from streamrec.models.persistence import save_model

    vocab = vocabulary(args.rows)
    gen = SyntheticCriteo(seed=0, vocab_sizes=vocab)
    work = Path(tempfile.mkdtemp(prefix="scale_big_", dir=args.workdir))
    budget = parse_bytes(args.budget)
    cfg = dlrm_config(tiered_tables(vocab, budget, work / "tiers"))
    report: dict = {"ids": sum(vocab), "budget_bytes": budget}
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    try:
        report["fill_seconds"] = fill(model, gen, now=0, progress=True)
        report["rss_after_fill_gib"] = rss_gib()
        trainer = Trainer(model, cfg, progress=False)
        stream = batches(gen, cfg.schema, args.steps, first_row=10_000_000)
        for b in stream[:10]:  # compile, warm up
            trainer.train_step(b)
        reset_hits(model)
        t0 = time.perf_counter()
        for b in stream[10:]:
            trainer.train_step(b)
        report["train_samples_per_s"] = (len(stream) - 10) * BATCH / (time.perf_counter() - t0)
        report["train_hit_rate"] = hit_rate(model)
        t0 = time.perf_counter()
        checkpoint = save_model(work / "checkpoint", model, cfg)
        report["checkpoint_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.train_step(stream[-1])
        save_model(work / "checkpoint2", model, cfg)  # the next one links what did not change
        report["second_checkpoint_seconds"] = time.perf_counter() - t0
        tables = model.dynamic_tables().values()
        report["rows"] = sum(len(t) for t in tables)
        report["dram_rows"] = sum(t.hot_rows for t in tables)
        report["disk_bytes_per_id"] = disk_bytes(model) / report["rows"]
        report["train_max_rss_gib"] = max_rss_gib()
        close(model)
        del model, trainer
        report.update(serve_checkpoint(checkpoint, stream[-1], args.requests))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def serve_checkpoint(checkpoint: Path, batch, requests: int) -> dict:
    """`streamrec serve` the checkpoint: seconds until ready, request latency, DRAM hit rate,
    the server's peak RSS."""
    import httpx

    port = 18000 + os.getpid() % 1000
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec", "serve", str(checkpoint), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        ready = time.perf_counter() - t0
        rows = [
            {**{c: int(batch.sparse[c].values[i]) for c in CRITEO_SPARSE},
             **{c: 1.0 for c in CRITEO_DENSE}}
            for i in range(min(100, batch.size))
        ]
        latencies = []
        for _ in range(requests):
            t = time.perf_counter()
            r = httpx.post(url + "/v1/rank", json={"candidates": rows}, timeout=60)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        with open(f"/proc/{proc.pid}/status") as fh:
            peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
        return {
            "restart_to_ready_seconds": ready,
            "serve_p50_ms": 1000 * statistics.median(latencies),
            "serve_max_rss_gib": peak / 2**20,
            "serve_hit_rate": _served_hit_rate(metrics),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _served_hit_rate(metrics: str) -> float:
    resolved = misses = 0.0
    for line in metrics.splitlines():
        if line.startswith("streamrec_table_ids_resolved_total{"):
            resolved += float(line.split()[-1])
        elif line.startswith("streamrec_table_dram_misses_total{"):
            misses += float(line.split()[-1])
    return 1.0 - misses / resolved if resolved else 1.0


# ---------------------------------------------------------------------------- soak
def run_soak(args) -> dict:
    """Train day after simulated day with a TTL; per day: samples/s, RSS, rows, disk."""
    vocab = vocabulary(args.rows)
    per_day_rows = args.events // args.days
    gen = SyntheticCriteo(
        seed=0, vocab_sizes=vocab, drift_per_row=args.drift, rows_per_day=per_day_rows
    )
    work = Path(tempfile.mkdtemp(prefix="scale_soak_", dir=args.workdir))
    budget = parse_bytes(args.budget)
    cfg = dlrm_config(
        tiered_tables(vocab, budget, work / "tiers"),
        ttl=args.ttl_days * 86400.0,
        mlp=[64],
        timestamp=True,
    )
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    trainer = Trainer(model, cfg, progress=False)
    days = []
    try:
        for day in range(args.days):
            seconds = 0.0
            samples = 0
            reset_hits(model)
            for rb in gen.record_batches(per_day_rows, BATCH, first_row=day * per_day_rows):
                batch = cfg.schema.encode(pa.Table.from_batches([rb]))
                t0 = time.perf_counter()
                trainer.train_step(batch)
                seconds += time.perf_counter() - t0
                samples += batch.size
            tables = model.dynamic_tables().values()
            days.append({
                "day": day + 1,
                "samples_per_s": samples / seconds,
                "rss_gib": rss_gib(),
                "rows": sum(len(t) for t in tables),
                "dram_rows": sum(t.hot_rows for t in tables),
                "disk_gib": disk_bytes(model) / 2**30,
                "hit_rate": hit_rate(model),
            })
            print(json.dumps(days[-1]), file=sys.stderr, flush=True)
    finally:
        close(model)
        shutil.rmtree(work, ignore_errors=True)
    tail = days[int(len(days) * 0.7):]
    day3 = days[min(2, len(days) - 1)]
    report = {
        "events": per_day_rows * args.days,
        "days": days,
        "ttl_days": args.ttl_days,
        "budget_bytes": budget,
        "rss_last_30pct_vs_day3": max(abs(d["rss_gib"] / day3["rss_gib"] - 1) for d in tail),
        "speed_last_30pct_vs_day3": min(d["samples_per_s"] for d in tail)
        / day3["samples_per_s"],
    }
    _plot_soak(days, args)
    return report


def _plot_soak(days: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [d["day"] for d in days]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(x, [d["rss_gib"] for d in days], marker="o")
    axes[0].set(title="resident memory", xlabel="simulated day", ylabel="GiB")
    axes[1].plot(x, [d["samples_per_s"] / 1000 for d in days], marker="o")
    axes[1].set(title="training speed", xlabel="simulated day", ylabel="k samples/s")
    axes[2].plot(x, [d["rows"] / 1e6 for d in days], marker="o", label="all rows")
    axes[2].plot(x, [d["dram_rows"] / 1e6 for d in days], marker="o", label="in DRAM")
    axes[2].set(title=f"rows (ttl {args.ttl_days} days)", xlabel="simulated day",
                ylabel="million")
    axes[2].legend()
    for ax in axes:
        ax.axvline(args.ttl_days, color="grey", lw=0.8, ls="--")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("scale_soak.png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="section", required=True)
    ratio = sub.add_parser("ratio", help="tiered vs all-in-DRAM, same run")
    ratio.add_argument("--rows", type=int, default=20_000_000, help="distinct ids in all")
    ratio.add_argument("--budget-share", type=float, default=0.2)
    ratio.add_argument("--warmup", type=int, default=40)
    ratio.add_argument("--windows", type=int, default=15)
    ratio.add_argument("--steps", type=int, default=10)
    ratio.add_argument(
        "--prefetch", action="store_true",
        help="read the next batch's disk rows on a thread (storage.prefetch: on)",
    )
    big = sub.add_parser("big", help="200M ids within a budget: train, checkpoint, serve")
    big.add_argument("--rows", type=int, default=200_000_000)
    big.add_argument("--budget", default="4GiB", help="DRAM budget of all tables together")
    big.add_argument("--steps", type=int, default=200)
    big.add_argument("--requests", type=int, default=50)
    soak = sub.add_parser("soak", help="days of training with a TTL: RSS and speed flat")
    soak.add_argument("--events", type=int, default=50_000_000)
    soak.add_argument("--days", type=int, default=10)
    soak.add_argument("--ttl-days", type=float, default=3.0)
    soak.add_argument("--rows", type=int, default=50_000_000, help="id universe")
    soak.add_argument("--drift", type=float, default=0.02, help="hot-set drift per row")
    soak.add_argument("--budget", default="1GiB")
    for p in (ratio, big, soak):
        p.add_argument("--workdir", default=None, help="where the disk tier goes (default /tmp)")
        p.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {"ratio": run_ratio, "big": run_big, "soak": run_soak}[args.section](args)
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
