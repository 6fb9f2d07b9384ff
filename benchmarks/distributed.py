"""Scale-out on this machine: 1 process vs 2 gloo processes, and the bytes each step exchanges.

    python benchmarks/distributed.py --json

DLRM on Criteo-shaped synthetic data (26 tables, Zipf ids, dim 16, global batch 2048), row-wise
sharded tables + DDP dense, `--steps` steps after warm-up. Reports global samples/s for 1 and 2
ranks, and per step the bytes one rank sends: with the de-duplication streamrec does and fp32
rows, with fp16 rows and gradients, and what sending every id un-deduplicated would cost (same
batches), and the hybrid mode (embedding gradients up to 2 steps in flight). docs/scaling.md
extrapolates these to N machines.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamrec.data.records import CRITEO_SPARSE
from streamrec.data.synthetic import SyntheticCriteo
from streamrec.embedding.dedup import dedup
from streamrec.embedding.sharded import shard_tables
from streamrec.models import build_model
from streamrec.train.distributed import local_slice
from streamrec.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from train import BATCH, DIM, dlrm_config


def _config(exchange: str):
    return dlrm_config(exchange=exchange)


def _batches(cfg, n: int):
    import pyarrow as pa

    gen = SyntheticCriteo(seed=0)
    return [
        cfg.schema.encode(pa.Table.from_batches([b])) for b in gen.record_batches(n * BATCH, BATCH)
    ]


def _worker(
    rank: int, world: int, init: str, exchange: str, steps: int, out: str, staleness: int
) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = dist.new_group(backend="gloo")
    gradient_group = dist.new_group(backend="gloo") if staleness else None
    cfg = _config(exchange)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    collections = shard_tables(
        model,
        group,
        torch.float16 if exchange == "fp16" else torch.float32,
        staleness,
        gradient_group,
    )
    trainer = Trainer(model, cfg, progress=False)
    trainer.forward_module = DistributedDataParallel(model)
    batches = [local_slice(b, rank, world) for b in _batches(cfg, steps + 3)]
    for b in batches[:3]:
        trainer.train_step(b)
    sent0 = sum(g.bytes_sent for c in collections for g in c.lookups)
    dist.barrier()
    t0 = time.perf_counter()
    for b in batches[3:]:
        trainer.train_step(b)
    for c in collections:
        c.flush()
    dist.barrier()
    seconds = time.perf_counter() - t0
    sent = (sum(g.bytes_sent for c in collections for g in c.lookups) - sent0) / steps
    Path(out, f"{rank}.json").write_text(json.dumps({"seconds": seconds, "bytes_per_step": sent}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, exchange: str, steps: int, staleness: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(
            _worker,
            args=(world, f"tcp://127.0.0.1:{_free_port()}", exchange, steps, out, staleness),
            nprocs=world,
            join=True,
        )
        ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
    seconds = max(r["seconds"] for r in ranks)
    return {
        "ranks": world,
        "exchange": exchange,
        "sparse_staleness": staleness,
        "samples_per_s": steps * BATCH / seconds,
        "bytes_per_step_per_rank": float(np.mean([r["bytes_per_step"] for r in ranks])),
    }


def undeduplicated_bytes(world: int, steps: int) -> float:
    """What one rank would send per step if every id went to its owner un-deduplicated."""
    cfg = _config("fp32")
    total = 0.0
    for b in _batches(cfg, steps):
        part = local_slice(b, 0, world)
        for name in CRITEO_SPARSE:
            n = part.sparse[name].values.numel()
            total += n * 16 + 2 * n * DIM * 4  # ids + counts, rows back, gradients out
    return total / steps


def deduplicated_ratio(world: int, steps: int) -> float:
    cfg = _config("fp32")
    ids = uniq = 0
    for b in _batches(cfg, steps):
        part = local_slice(b, 0, world)
        for name in CRITEO_SPARSE:
            v = part.sparse[name].values.numpy()
            ids += v.size
            uniq += dedup(v)[0].size
    return uniq / ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = {
        "batch": BATCH,
        "dim": DIM,
        "tables": len(CRITEO_SPARSE),
        "one_rank": run(1, "fp32", args.steps),
        "two_ranks": run(2, "fp32", args.steps),
        "two_ranks_fp16": run(2, "fp16", args.steps),
        "two_ranks_hybrid_staleness_2": run(2, "fp32", args.steps, staleness=2),
    }
    report["speedup_two_vs_one"] = (
        report["two_ranks"]["samples_per_s"] / report["one_rank"]["samples_per_s"]
    )
    report["two_ranks_bytes_without_dedup"] = undeduplicated_bytes(2, args.steps)
    report["unique_id_fraction_two_ranks"] = deduplicated_ratio(2, args.steps)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
