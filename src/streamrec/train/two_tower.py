"""Training, evaluating and exporting a two-tower retrieval model.

    result, model_dir = train_two_tower(load_config("examples/ml100k_two_tower.yaml"), "runs/tt")

1. the per-user time split of the interaction log (all interactions are positives);
2. epochs of in-batch softmax with log-Q correction (item frequencies in the training data);
3. the item catalog (every item id with its item features) through the item tower → a faiss
   index of the configured kind, with its recall@100 against exact search;
4. recall@10/@50 and NDCG@10 of each user's next items, next to the popularity baseline;
5. a model directory with the towers, the tables, `retrieval/index.faiss` and
   `retrieval/catalog.parquet` (checksummed like every other file) for the server.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from streamrec.config import JobConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.loader import BatchLoader
from streamrec.data.splits import open_splits
from streamrec.embedding.sparse_optimizer import SparseOptimizer
from streamrec.models.persistence import save_model
from streamrec.models.registry import build_model
from streamrec.models.two_tower import TwoTower
from streamrec.retrieval.evaluate import popularity_recommendations, ranking_metrics, user_items
from streamrec.retrieval.index import IndexParams, Retriever, recall_against_exact
from streamrec.retrieval.model_dir import (
    CATALOG_FILE,
    INDEX_FILE,
    find_retrieval_dir,
    load_retrieval_model,
)
from streamrec.schema import input_kinds
from streamrec.store.atomic import write_atomic
from streamrec.train.health import HealthRules, HealthStop
from streamrec.train.metrics import json_ready
from streamrec.train.preparation import seed_everything
from streamrec.train.run_dir import RunDir
from streamrec.train.run_metrics import RunMetrics


def index_params(config: JobConfig) -> IndexParams:
    r = config.retrieval
    return IndexParams(
        index_type=r.index,
        nlist=r.nlist,
        nprobe=r.nprobe,
        pq_m=r.pq_m,
        hnsw_m=r.hnsw_m,
        ef_search=r.ef_search,
    )


def item_catalog(log: pa.Table, item_features: list[str]) -> pa.Table:
    """One row per item (its last occurrence in the log) with the item-side columns."""
    items = log["item_id"].to_numpy()
    _, last = np.unique(items[::-1], return_index=True)
    rows = len(items) - 1 - last
    return log.take(pa.array(np.sort(rows))).select(
        [c for c in item_features if c in log.column_names]
    )


@torch.no_grad()
def item_vectors(model: TwoTower, catalog: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    batch = model.schema.encode(_with_all_columns(catalog, model), with_labels=False)
    return catalog["item_id"].to_numpy().astype(np.int64), model.item_vectors(batch).numpy()


def _with_all_columns(table: pa.Table, model: TwoTower) -> pa.Table:
    """The schema encodes every feature; fill the other tower's columns with nulls."""
    for f in model.schema.embeddings:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, pa.int64()))
    return table


def user_queries(train: pa.Table, user_features: list[str], history: int) -> pa.Table:
    """Each user as of their last training interaction, with all training items as history."""
    users = train["user_id"].to_numpy()
    _, last = np.unique(users[::-1], return_index=True)
    rows = np.sort(len(users) - 1 - last)
    base = train.take(pa.array(rows))
    seen = user_items(train)
    hist = [seen[u][-history:] for u in base["user_id"].to_pylist()]
    cols = {c: base[c] for c in user_features if c in base.column_names and c != "history"}
    cols["history"] = pa.array(hist, pa.list_(pa.int64()))
    return pa.table(cols)


@torch.no_grad()
def evaluate_retrieval(
    model: TwoTower, retriever: Retriever, train: pa.Table, test: pa.Table, history: int
) -> dict[str, float]:
    model.eval()
    queries = user_queries(train, model.user_features, history)
    batch = model.schema.encode(_with_all_columns(queries, model), with_labels=False)
    vectors = model.user_vectors(batch).numpy()
    seen = user_items(train)
    users = queries["user_id"].to_pylist()
    ids, _ = retriever.search(vectors, 50, exclude=[set(seen[u]) for u in users])
    recs = {u: [i for i in row if i >= 0] for u, row in zip(users, ids.tolist(), strict=True)}
    relevant = {u: set(v) for u, v in user_items(test).items() if u in seen}
    ours = ranking_metrics(recs, relevant)
    pop = ranking_metrics(popularity_recommendations(train, list(relevant), 50, seen), relevant)
    return {**ours, **{f"baseline_{k}": v for k, v in pop.items()}}


def train_two_tower(config: JobConfig, out: str | Path, progress: bool = True) -> tuple[dict, Path]:
    run = RunDir(out).open()  # one writer per run directory
    try:
        return _train(config, run.path, progress)
    finally:
        run.release()


def _train(config: JobConfig, out: Path, progress: bool) -> tuple[dict, Path]:
    seed_everything(config.train.seed)
    splits = open_splits(config.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    config = config.model_copy(deep=True)
    config.schema_ = config.schema.fit(train)
    model = build_model(config.model, config.schema, config.table_configs())
    if not isinstance(model, TwoTower):
        raise ValueError("train_two_tower needs model.name: two_tower")
    opt = torch.optim.Adam(model.parameters(), lr=config.train.dense_lr)
    sparse = SparseOptimizer(model)  # the tables' row optimizers: the embedding half of a step
    counts = pc.value_counts(train["item_id"].combine_chunks())
    order = np.argsort(counts.field("values").to_numpy())
    known_items = counts.field("values").to_numpy()[order]
    log_freq = np.log(counts.field("counts").to_numpy()[order] / float(train.num_rows))
    (out / "metrics.csv").unlink(missing_ok=True)  # every two-tower run starts afresh
    shutil.rmtree(out / "tb", ignore_errors=True)
    log = RunMetrics(out)  # metrics.csv + RUN/tb: softmax loss, then recall@k
    (out / "status.json").unlink(missing_ok=True)
    health = (
        HealthRules(config.train.health_rules, config.train.health)
        if config.train.health != "off"
        else None
    )
    stopped: HealthStop | None = None
    started = time.perf_counter()
    steps = 0
    for epoch in range(config.train.epochs):
        if stopped is not None:
            break
        model.train()
        order = np.random.default_rng([config.train.seed, epoch]).permutation(train.num_rows)
        shuffled = train.take(pa.array(order))
        loader = BatchLoader(
            lambda t=shuffled: t.to_batches(65536),
            config.schema,
            config.data.batch_size,
            drop_last=True,
            with_labels=False,
        )
        bar = tqdm(loader, desc=f"two-tower epoch {epoch + 1}", disable=not progress, leave=False)
        for batch in bar:
            items = batch.sparse["item_id"].values.numpy()
            at = np.clip(np.searchsorted(known_items, items), 0, len(known_items) - 1)
            log_q = torch.from_numpy(log_freq[at].astype(np.float32))
            check = health is not None and health.due(steps + 1)
            if check:
                health.watch_activations(model)
            try:
                loss = model.loss(batch, log_q)
            finally:
                if check:
                    health.unwatch(steps + 1)
            opt.zero_grad()
            loss.backward()
            if check:
                health.check_gradients(steps + 1, model, sparse.gradients(), measured=False)
            opt.step()
            sparse.step(examples=batch.size)
            steps += 1
            if health is not None:
                stopped = _watch_health(health, model, out, log, steps, float(loss.detach()), check)
                if stopped is not None:
                    break
            if steps % config.train.log_every_steps == 0:
                value = float(loss.detach())
                bar.set_postfix(loss=f"{value:.3f}")
                elapsed = max(time.perf_counter() - started, 1e-9)
                samples = steps * config.data.batch_size
                log.row(
                    {
                        "phase": "train",
                        "epoch": epoch + 1,
                        "step": steps,
                        "samples": samples,
                        "loss": value,
                        "samples_per_s": samples / elapsed,
                        "lr": config.train.dense_lr,
                    }
                )
    seconds = time.perf_counter() - started
    full_log = pa.concat_tables([train, test])
    catalog = item_catalog(full_log, model.item_features)
    ids, vectors = item_vectors(model, catalog)
    params = index_params(config)
    retriever = Retriever(vectors.shape[1], params)
    retriever.build(ids, vectors)
    index_recall = recall_against_exact(retriever, ids, vectors, vectors[:200], 100)
    metrics = evaluate_retrieval(model, retriever, train, test, config.data.history_length or 50)
    metrics["index_recall@100_vs_exact"] = index_recall
    log.scalars("valid", metrics, steps)
    log.flush()
    catalog_bytes = io.BytesIO()
    pq.write_table(catalog, catalog_bytes)
    kinds = input_kinds(train, config.schema.input_columns(with_labels=False))
    model_dir = save_model(
        out / "model",
        model,
        config,
        {
            "metrics": metrics,
            "input_kinds": kinds,
            "model_type": "retrieval",
            "retrieval": {
                "index": params.__dict__,
                "dim": int(vectors.shape[1]),
                "items": int(len(ids)),
                "tombstones": [],
            },
        },
        extra_files={
            INDEX_FILE: retriever.to_bytes(),
            CATALOG_FILE: catalog_bytes.getvalue(),
        },
    )
    if stopped is not None:
        raise stopped
    result = {
        "metrics": metrics,
        "steps": steps,
        "seconds": seconds,
        "samples_per_s": steps * config.data.batch_size / max(seconds, 1e-9),
    }
    return result, model_dir


def _watch_health(
    health: HealthRules,
    model: TwoTower,
    out: Path,
    log: RunMetrics,
    step: int,
    loss: float,
    checked: bool,
) -> HealthStop | None:
    """The health rules after one two-tower step: warnings to TensorBoard and status.json;
    under `train.health: stop`, the HealthStop to end training with (the model trained so far
    is still indexed and saved, for a look: two-tower runs restart from scratch)."""
    health.check_loss(step, loss)
    if checked:
        health.check_tables(step, model.dynamic_tables())
    fired = health.take_fired()
    if not fired:
        return None
    log.scalars("health", {w.key: w.value for w in fired}, step)
    status = {"phase": "train", "step": step, "health": health.active_json()}
    write_atomic(out / "status.json", json.dumps(json_ready(status), indent=1))
    if health.stop_on_warning:
        return HealthStop(
            fired[0], "the model trained so far was saved to model/ (two-tower runs do not resume)"
        )
    return None


def evaluate_retrieval_dir(path: str | Path) -> dict:
    """recall@10/@50 and NDCG@10 of a saved two-tower model on its config's test split."""
    directory = find_retrieval_dir(path)
    if directory is None:
        raise ValueError(f"{path}: no retrieval model (retrieval/index.faiss)")
    loaded = load_retrieval_model(directory)
    config = loaded.config
    splits = open_splits(config.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    metrics = evaluate_retrieval(
        loaded.model, loaded.retriever, train, test, config.data.history_length or 50
    )
    return {"metrics": metrics, "model_version": loaded.version}
