"""End-to-end DLRM training throughput: streamrec next to TorchRec 1.8 and DeepCTR-torch.

    .venv-peers/bin/python benchmarks/train.py --json     # the peers venv has all three

Criteo-shaped synthetic data (26 sparse tables, 13 dense, Zipf ids, batch 2048, dim 16),
DLRM with bottom MLP 512-256-16 and top MLP 512-256-1, row-wise Adagrad on the tables and
Adagrad on the dense part, same process and threads. Windows of `--steps` steps alternate
between streamrec and TorchRec (A B A B …); the report gives samples/s medians and the median
per-window ratio. DeepCTR-torch's DeepFM is timed through its own `fit` loop.

TorchRec's tables are fixed-size, so its ids are the synthetic ids modulo the table size (the
hashing trick its users apply); ours are the raw 64-bit ids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pyarrow as pa
import torch

from streamrec.config import parse_config
from streamrec.data.records import CRITEO_DENSE, CRITEO_SPARSE
from streamrec.data.synthetic import SyntheticCriteo
from streamrec.models import build_model
from streamrec.train.trainer import Trainer

BATCH = 2048
DIM = 16
CAP = 1_000_000


def make_tables(num_batches: int, seed: int = 0) -> list[pa.Table]:
    gen = SyntheticCriteo(seed=seed)
    return [pa.Table.from_batches([b]) for b in gen.record_batches(num_batches * BATCH, BATCH)]


def dlrm_config(precision: str = "fp32", exchange: str = "fp32"):
    """The benchmark DLRM: 26 tables (dim 16, row-wise Adagrad), MLPs 512-256-16 / 512-256-1."""
    return parse_config(
        {
            "schema": {
                "labels": [{"name": "label"}],
                "dense": [{"name": c, "transform": "log1p"} for c in CRITEO_DENSE],
                "embeddings": [{"name": c, "missing": "empty"} for c in CRITEO_SPARSE],
            },
            "default_table": {"dim": DIM, "optimizer": "rowwise_adagrad", "lr": 0.05},
            "model": {"name": "dlrm", "params": {"bottom": [512, 256], "top": [512, 256]}},
            "train": {
                "dense_optimizer": "adagrad",
                "dense_lr": 0.05,
                "precision": precision,
                "exchange_precision": exchange,
            },
        }
    )


def ours(tables: list[pa.Table], precision: str = "fp32"):
    cfg = dlrm_config(precision=precision)
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    trainer = Trainer(model, cfg, progress=False)
    batches = [cfg.schema.encode(t) for t in tables]
    state = {"i": 0}

    def step() -> None:
        trainer.train_step(batches[state["i"] % len(batches)])
        state["i"] += 1

    return step


def torchrec(tables: list[pa.Table]):
    import torchrec
    from torchrec.models.dlrm import DLRM
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    configs = [
        torchrec.EmbeddingBagConfig(
            name=f"t_{c}", embedding_dim=DIM, num_embeddings=CAP, feature_names=[c]
        )
        for c in CRITEO_SPARSE
    ]
    ebc = FusedEmbeddingBagCollection(
        tables=configs, optimizer_type=torchrec.optim.RowWiseAdagrad, optimizer_kwargs={"lr": 0.05}
    )
    model = DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=len(CRITEO_DENSE),
        dense_arch_layer_sizes=[512, 256, DIM],
        over_arch_layer_sizes=[512, 256, 1],
    )
    dense_params = [p for n, p in model.named_parameters() if "sparse_arch" not in n]
    opt = torch.optim.Adagrad(dense_params, lr=0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    inputs = []
    for t in tables:
        dense = np.stack([t[c].to_numpy() for c in CRITEO_DENSE], 1)
        dense = torch.tensor(np.log1p(dense), dtype=torch.float32)
        ids = torch.from_numpy(
            np.concatenate(
                [
                    np.mod(t[c].to_numpy().view(np.uint64), CAP).astype(np.int64)
                    for c in CRITEO_SPARSE
                ]
            )
        )
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=CRITEO_SPARSE, values=ids, lengths=torch.ones(len(ids), dtype=torch.int32)
        )
        labels = torch.tensor(t["label"].to_numpy(), dtype=torch.float32)
        inputs.append((dense, kjt, labels))
    state = {"i": 0}

    def step() -> None:
        dense, kjt, labels = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        logits = model(dense, kjt).squeeze(-1)
        loss = loss_fn(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def deepctr_samples_per_s(tables: list[pa.Table]) -> float:
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DeepFM

    table = pa.concat_tables(tables)
    x = {
        c: np.mod(table[c].to_numpy().view(np.uint64), CAP).astype(np.int64) for c in CRITEO_SPARSE
    }
    x.update({c: np.log1p(table[c].to_numpy()).astype(np.float32) for c in CRITEO_DENSE})
    columns = [SparseFeat(c, CAP, embedding_dim=DIM) for c in CRITEO_SPARSE] + [
        DenseFeat(c, 1) for c in CRITEO_DENSE
    ]
    model = DeepFM(columns, columns, dnn_hidden_units=(512, 256), device="cpu")
    model.compile("adagrad", "binary_crossentropy")
    y = table["label"].to_numpy().astype(np.float32)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # warm-up
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return len(y) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--batches", type=int, default=20, help="distinct batches to cycle through")
    ap.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="streamrec's dense precision (bf16 autocast); TorchRec stays fp32",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    tables = make_tables(args.batches)
    ours_step = ours(tables, args.precision)
    report: dict = {
        "batch": BATCH,
        "dim": DIM,
        "tables": 26,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
    }
    try:
        peer_step = torchrec(tables)
    except ImportError as e:
        peer_step = None
        report["torchrec"] = f"not importable here ({e}); run in the peers venv"
    for _ in range(3):
        ours_step()
        if peer_step:
            peer_step()
    a, b = [], []
    for _ in range(args.windows):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            ours_step()
        a.append(args.steps * BATCH / (time.perf_counter() - t0))
        if peer_step:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                peer_step()
            b.append(args.steps * BATCH / (time.perf_counter() - t0))
    report["streamrec_samples_per_s"] = statistics.median(a)
    if b:
        report["torchrec_samples_per_s"] = statistics.median(b)
        report["ratio_vs_torchrec"] = statistics.median(x / y for x, y in zip(a, b, strict=True))
    try:
        report["deepctr_deepfm_samples_per_s"] = deepctr_samples_per_s(tables[: args.batches])
        report["ratio_vs_deepctr"] = (
            report["streamrec_samples_per_s"] / report["deepctr_deepfm_samples_per_s"]
        )
    except ImportError as e:
        report["deepctr"] = f"not importable here ({e})"
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
