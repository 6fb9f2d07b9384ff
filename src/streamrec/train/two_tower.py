"""Training, evaluating and exporting a two-tower retrieval model.

    result, model_dir = train_two_tower(load_config("examples/ml100k_two_tower.yaml"), "runs/tt")

1. the per-user time split of the interaction log (all interactions are positives, or the
   rows labelled 1 when the schema has a label);
2. epochs of in-batch softmax with log-Q correction through the one `Trainer` (checkpoints,
   `--resume`, TTL / capacity eviction, clipping, bf16 and health rules as for a ranker);
3. the item catalog (every item id with its item features) through the item tower → a faiss
   index of the configured kind, with its recall@100 against exact search;
4. recall@10/@50 and NDCG@10 of each user's next items, next to the popularity baseline;
5. a model directory with the towers, the tables, `retrieval/index.faiss` and
   `retrieval/catalog.parquet` (checksummed like every other file) for the server.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from streamrec.config import JobConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.loader import BatchLoader
from streamrec.data.splits import open_splits
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
from streamrec.train.preparation import Start, checkpoint_start, seed_everything
from streamrec.train.run_dir import RunDir
from streamrec.train.trainer import Trainer


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


def train_two_tower(
    config: JobConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> tuple[dict, Path]:
    """Train, index and save a two-tower retriever in the run directory `out`; `resume`
    continues from its newest checkpoint (written every epoch and every
    `train.checkpoint_every_steps`), as a ranker's run does."""
    run = RunDir(out).open()  # one writer per run directory
    try:
        return _train(run, config, resume, progress)
    finally:
        run.release()


def _train(run: RunDir, config: JobConfig, resume: bool, progress: bool) -> tuple[dict, Path]:
    out = run.path
    seed_everything(config.train.seed)
    splits = open_splits(config.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    start = run.load_checkpoint(lambda path: checkpoint_start(path, config)) if resume else None
    if start is None:
        if not resume:
            run.start_afresh()
        start = _fresh_start(config, train)
    model = start.model
    schema, batch_size = start.config.schema, start.config.data.batch_size
    trainer = Trainer(model, start.config, out, start.optimizer, progress=progress)
    trainer.extra_manifest = {"input_kinds": start.kinds}
    start_epoch = skip = 0
    if start.position is not None:
        start_epoch, skip = start.position["epoch"], start.position["step_in_epoch"]
        trainer.restore_position(start.position)

    def epoch_batches(epoch: int) -> BatchLoader:
        """The training rows in a fresh order each epoch — a pure function of (seed, epoch), so
        a resumed run skips exactly the batches it had trained on."""
        order = np.random.default_rng([start.config.train.seed, epoch]).permutation(len(train))
        shuffled = train.take(pa.array(order))
        return BatchLoader(lambda: shuffled.to_batches(65536), schema, batch_size, drop_last=True)

    fitted = trainer.fit(epoch_batches, None, start_epoch, skip)
    full_log = pa.concat_tables([train, test])
    catalog = item_catalog(full_log, model.item_features)
    ids, vectors = item_vectors(model, catalog)
    params = index_params(start.config)
    retriever = Retriever(vectors.shape[1], params)
    retriever.build(ids, vectors)
    index_recall = recall_against_exact(retriever, ids, vectors, vectors[:200], 100)
    metrics = evaluate_retrieval(
        model, retriever, train, test, start.config.data.history_length or 50
    )
    metrics["index_recall@100_vs_exact"] = index_recall
    trainer.log_scalars("valid", metrics)
    catalog_bytes = io.BytesIO()
    pq.write_table(catalog, catalog_bytes)
    model_dir = save_model(
        out / "model",
        model,
        start.config,
        {
            "metrics": metrics,
            "train": fitted.to_json(),
            "input_kinds": start.kinds,
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
    result = {
        "metrics": metrics,
        "steps": fitted.steps,
        "epochs": fitted.epochs,
        "resumed_from_step": fitted.resumed_from_step,
        "skipped_steps": fitted.skipped_steps,
        "seconds": trainer.train_seconds,
        "samples_per_s": fitted.samples_per_s,
    }
    return result, model_dir


def _fresh_start(config: JobConfig, train: pa.Table) -> Start:
    """A new two-tower model: the schema fitted on the training split, the item-frequency
    estimate seeded with that split's items (so log-Q is right from the first step)."""
    fitted = config.model_copy(deep=True)
    fitted.schema_ = config.schema.fit(train)
    model = build_model(fitted.model, fitted.schema_, fitted.table_configs())
    if not isinstance(model, TwoTower):
        raise ValueError("train_two_tower needs model.name: two_tower")
    chunks = BatchLoader(lambda: train.to_batches(65536), fitted.schema_, 65536)
    model.item_frequency.seed(torch.cat([b.sparse[model.item_ids_feature].values for b in chunks]))
    kinds = input_kinds(train, fitted.schema_.input_columns(with_labels=False))
    return Start(model, fitted, kinds)


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
