"""check_model: what every ranking model must do to work in streamrec (river's check_estimator).

    from streamrec.models.check import check_model
    check_model("deepfm")                          # a built-in model
    register_model("mine", Mine); check_model("mine", {"width": 8})

Each check raises AssertionError naming what broke:
  learns          one training step (forward, backward, dense + sparse step) gives finite scores
  eval_admits     eval mode adds no table row, and unseen ids still score
  save_load       a saved and reloaded model scores identically
  state_dict      torch.save / torch.load(weights_only=True) of state_dict() scores identically
  request_sharing a batch of several requests, each user's features given once per request
                  (`Batch.context`: what a server's batches carry), scores as the same rows
                  without the context do (to 1e-5)
  sharded         the same model with its tables sharded over 2 ranks (gloo, two processes)
                  scores each rank's half of a batch as the local model scores the whole

The data is synthetic, shaped like a recommender's: a user, an item, the user's recent items
(a sequence sharing the item table), multi-valued genres, one dense number, and two labels.
"""

from __future__ import annotations

import io
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamrec.batch import Batch
from streamrec.config import JobConfig
from streamrec.embedding.reshard import reshard
from streamrec.embedding.sharded import shard_tables
from streamrec.embedding.sparse_optimizer import SparseOptimizer
from streamrec.models.base import RankingModel
from streamrec.models.persistence import load_model, save_model
from streamrec.models.registry import MODELS, build_model, register_model
from streamrec.models.request_sharing import always_split
from streamrec.schema import Schema

SCHEMA = {
    "labels": [{"name": "click"}, {"name": "like"}],
    "dense": [{"name": "age", "transform": "standardize"}],
    "embeddings": [
        {"name": "user_id"},
        {"name": "item_id", "table": "item"},
        {"name": "history", "table": "item", "max_length": 5, "pooling": "mean"},
        {"name": "genres", "pooling": "mean"},
    ],
}
CHECKS = ("learns", "eval_admits", "save_load", "state_dict", "request_sharing", "sharded")
REQUEST_FEATURES = ("user_id", "age", "history")  # what a request gives once for its rows


def rows(n: int, seed: int, id_offset: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 200, n) + id_offset
    return pa.table(
        {
            "click": rng.integers(0, 2, n).astype(np.float32),
            "like": rng.integers(0, 2, n).astype(np.float32),
            "age": rng.normal(35, 10, n),
            "user_id": rng.integers(0, 100, n) + id_offset,
            "item_id": items,
            "history": [list(rng.integers(0, 200, rng.integers(0, 6)) + id_offset) for _ in items],
            "genres": [[f"g{g}" for g in rng.integers(0, 8, 2)] for _ in items],
        }
    )


def request_rows(sizes: list[int], seed: int) -> pa.Table:
    """`rows`, laid out request after request (`sizes` rows each), every row of a request
    with its request's user, age and history."""
    table = rows(sum(sizes), seed)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    for name in REQUEST_FEATURES:
        column = table.column(name).take(pa.array(first))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def job_config(
    name: str, params: dict[str, Any] | None, table: dict[str, Any] | None = None
) -> JobConfig:
    config = JobConfig.model_validate(
        {
            "name": f"check-{name}",
            "schema": SCHEMA,
            "default_table": {"dim": 8, "optimizer": "adagrad", "lr": 0.05, **(table or {})},
            "model": {"name": name, "params": params or {}},
        }
    )
    config.schema_ = config.schema.fit(rows(256, 0))
    return config


def check_model(
    name: str, params: dict[str, Any] | None = None, table: dict[str, Any] | None = None
) -> list[str]:
    """Run every check on the registered model `name` built with `params` (and `table`:
    settings over the default table's, e.g. {"rare_dim": 4}). → the checks passed (all of
    CHECKS); AssertionError at the first that fails."""
    config = job_config(name, params, table)
    torch.manual_seed(0)
    model = _build(config)
    batch = config.schema.encode(rows(256, 1))
    model.prepare(lambda: [batch])  # what a model learns in batch first (gbdt_lr's trees)
    _learns(model, batch)
    model.eval()
    _eval_admits_nothing(model, config.schema)
    with tempfile.TemporaryDirectory() as tmp:
        _save_load(model, config, batch, Path(tmp))
        _state_dict(model, config, batch)
        _request_sharing(model, config.schema)
        _sharded(model, config, name, batch, Path(tmp))
    return list(CHECKS)


def _build(config: JobConfig) -> RankingModel:
    model = build_model(config.model, config.schema, config.table_configs())
    assert isinstance(model, RankingModel), f"{config.model.name} is not a RankingModel"
    return model


def _learns(model: RankingModel, batch: Batch) -> None:
    model.train()
    params = list(model.parameters())  # a model may be all tables
    dense = torch.optim.Adam(params, lr=1e-3) if params else None
    sparse = SparseOptimizer(model)
    for _ in range(3):
        logits = model(batch)
        assert logits.shape == (batch.size, model.num_tasks), (
            f"learns: forward gave {tuple(logits.shape)}, not [B, num_tasks] = "
            f"{(batch.size, model.num_tasks)}"
        )
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), batch.labels[:, : logits.shape[1]]
        )
        loss.backward()
        if dense is not None:
            dense.step()
            dense.zero_grad()
        sparse.step(examples=logits.numel())
    assert torch.isfinite(model.predict(batch)).all(), "learns: scores are not finite"
    assert sum(len(t) for t in model.dynamic_tables().values()) > 0, "learns: no row admitted"


def _eval_admits_nothing(model: RankingModel, schema: Schema) -> None:
    sizes = {n: len(t) for n, t in model.dynamic_tables().items()}
    unseen = schema.encode(rows(64, 2, id_offset=10_000))
    scores = model.predict(unseen)
    assert torch.isfinite(scores).all(), "eval_admits: unseen ids do not score"
    after = {n: len(t) for n, t in model.dynamic_tables().items()}
    assert after == sizes, f"eval_admits: eval mode changed table sizes {sizes} → {after}"


def _save_load(model: RankingModel, config: JobConfig, batch: Batch, tmp: Path) -> None:
    loaded = load_model(save_model(tmp / "model", model, config)).model
    assert torch.equal(loaded.predict(batch), model.predict(batch)), (
        "save_load: the reloaded model scores differently"
    )


def _state_dict(model: RankingModel, config: JobConfig, batch: Batch) -> None:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # different initial weights: everything must come from the file
    fresh = _build(config)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    assert torch.equal(fresh.predict(batch), model.predict(batch)), (
        "state_dict: a model loaded from torch.save(model.state_dict()) scores differently"
    )


def _request_sharing(model: RankingModel, schema: Schema) -> None:
    sizes = [1, 7, 30, 2, 60]
    batch = schema.encode(request_rows(sizes, 3), with_labels=False)
    shared = schema.share_requests(batch, sizes, REQUEST_FEATURES)
    assert shared.context is not None, "request_sharing: the batch carries no request context"
    expected = model.predict(batch)
    with always_split():  # these small layers would not be split otherwise
        got = model.predict(shared)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (
        f"request_sharing: scores with the request context are up to "
        f"{float((got - expected).abs().max()):.2e} away from the same rows without it"
    )


def _sharded(model: RankingModel, config: JobConfig, name: str, batch: Batch, tmp: Path) -> None:
    directory = save_model(tmp / "for-ranks", model, config)
    expected = model.predict(batch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cls = MODELS[name]
    mp.spawn(_rank, args=(2, port, name, cls, str(directory), str(tmp)), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp / f"rank-{r}.pt", weights_only=True) for r in range(2)])
    assert torch.allclose(got, expected, atol=1e-5), (
        f"sharded: 2 ranks score up to {float((got - expected).abs().max()):.2e} away from "
        "the local model"
    )


def _rank(rank: int, world: int, port: int, name: str, cls: type, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    register_model(name, cls)  # a user's model: this process has not registered it yet
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        loaded = load_model(directory)
        model = loaded.model
        for table in model.dynamic_tables().values():  # keep only the rows this rank owns
            table.load_state_dict(reshard(table.settings, [table.state_dict()], world)[rank])
        shard_tables(model, dist.new_group(backend="gloo"))
        model.eval()
        batch = loaded.config.schema.encode(rows(256, 1))
        lo, hi = batch.size * rank // world, batch.size * (rank + 1) // world
        torch.save(model.predict(batch.slice(lo, hi)), Path(out) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()
