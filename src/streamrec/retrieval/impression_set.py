"""An impression-shaped training set for the ranker, from a retriever and an interactions log.

The ranker of a cascade only ever scores what retrieval hands it: the K1 items nearest a user.
A ranker trained on P(rating ≥ 4 | rated) has never seen an item the user ignored, and puts
niche, well-rated items on top of the list — on MovieLens-100k the served list's recall@50
fell to 0.09 while the retriever's own order reached 0.42. The systems this project follows
train the ranker on impressions instead: what was shown, with what the user then did.

Before the server has logged any impression (`serve --log-impressions`), this module makes
them from history: each user's interactions are split by time into a past (the query: user
features as of the last past interaction, and the past items as history) and a future
(`target_fraction`). The retriever, queried exactly as the server queries it, returns the
`candidates` nearest unseen items with their retrieval scores; each becomes one row —
the user's context features, the item's catalog features, `retrieval_score`, and the label 1
if the user interacted with the item in the future, else 0. `candidates` should be the K1 the
server retrieves: a ranker trained on a shorter list has never seen the tail it must push
down (measured on ML-100k: 1,000 candidates → recall@50 0.423, 100 → 0.241, retriever 0.422).

`retrieval_score` is a candidate feature the server fills in from its retrieval stage when the
ranker reads it, so the ranker starts from the retriever's order and learns where to depart
from it — and the impression log records it among the features used.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from streamrec.retrieval.model_dir import RetrievalModel

RETRIEVAL_SCORE = "retrieval_score"
LABEL = "label"
_QUERY_BATCH = 1024


def impression_set(
    retrieval: RetrievalModel,
    interactions: pa.Table,
    candidates: int,
    context_features: list[str],
    target_fraction: float = 0.2,
    history_length: int = 50,
    timestamp: str | None = "timestamp",
) -> pa.Table:
    """One row per (user, retrieved item): context features (those the retriever also reads:
    a /v1/recommend body carries no others), the item's catalog features,
    `retrieval_score` (float32), `label` (int8: the user interacted with it later) and the
    timestamp of the user's last past interaction. `interactions` needs user_id, item_id and
    (to order each user's events) `timestamp`; users with fewer than 2 interactions are
    skipped (nothing to predict)."""
    if not 0 < target_fraction < 1:
        raise ValueError(f"target_fraction is in (0, 1), not {target_fraction}")
    order = ["user_id", "item_id"] if timestamp is None else ["user_id", timestamp]
    log = interactions.sort_by([(c, "ascending") for c in order])
    users = log["user_id"].to_numpy()
    items = log["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    sizes = ends - starts
    keep = sizes >= 2
    starts, ends, sizes = starts[keep], ends[keep], sizes[keep]
    cuts = starts + np.maximum(1, np.floor(sizes * (1 - target_fraction)).astype(np.int64))
    last_past = cuts - 1  # the row each user's query is built from

    model = retrieval.model
    user_features = [f for f in model.user_features if f != "history"]
    base = log.take(pa.array(last_past))
    query_columns = {f: base[f] for f in user_features if f in base.column_names}
    histories = [items[s:c][-history_length:].tolist() for s, c in zip(starts, cuts, strict=True)]
    if "history" in model.user_features:
        query_columns["history"] = pa.array(histories, pa.list_(pa.int64()))
    queries = pa.table(query_columns)
    for f in model.schema.embeddings:  # the schema encodes every feature: the items' are null
        if f.name not in queries.column_names:
            queries = queries.append_column(f.name, pa.nulls(queries.num_rows, pa.int64()))

    vectors = []
    with torch.inference_mode():
        for lo in range(0, queries.num_rows, _QUERY_BATCH):
            part = queries.slice(lo, _QUERY_BATCH)
            encoded = model.schema.encode(part, with_labels=False)
            vectors.append(model.user_vectors(encoded).numpy())
    past = [set(items[s:c].tolist()) for s, c in zip(starts, cuts, strict=True)]
    # One search per user, as the server makes it: an approximate index (HNSW) searches
    # deeper for a longer exclude list, so a batch sharing the longest one would return
    # other near-ties than the server does.
    user_vectors = np.concatenate(vectors)
    found = np.full((len(past), candidates), -1, np.int64)
    scores = np.zeros((len(past), candidates), np.float32)
    for u, exclude in enumerate(past):
        found[u], scores[u] = (
            r[0] for r in retrieval.retriever.search(user_vectors[u : u + 1], candidates, [exclude])
        )

    valid = found >= 0
    row_user = np.repeat(np.arange(len(starts)), valid.sum(axis=1))
    shown = found[valid]
    future_user = np.repeat(np.arange(len(starts)), ends - cuts)
    future_item = np.concatenate([items[c:e] for c, e in zip(cuts, ends, strict=True)])
    labels = _pairs_in(row_user, shown, future_user, future_item).astype(np.int8)
    columns: dict[str, pa.Array] = {}
    context_rows = pa.array(row_user)
    for f in context_features:  # those a /v1/recommend user can carry: the retriever's
        if f in base.column_names and f in retrieval.kinds and f != "item_id":
            columns[f] = base[f].take(context_rows)
    catalog = pa.Table.from_pylist(list(retrieval.catalog.values()))
    catalog_ids = catalog["item_id"].to_numpy()
    by_id = np.argsort(catalog_ids)
    found_at = by_id[np.minimum(np.searchsorted(catalog_ids, shown, sorter=by_id), len(by_id) - 1)]
    if not np.array_equal(catalog_ids[found_at], shown):  # never a neighbour's features
        missing = np.setdiff1d(shown, catalog_ids)[:5].tolist()
        raise ValueError(f"the retriever's index holds items its catalog lacks: {missing} …")
    positions = pa.array(found_at)
    for c in catalog.column_names:
        if c not in columns:
            columns[c] = catalog[c].take(positions)
    columns[RETRIEVAL_SCORE] = pa.array(scores[valid].astype(np.float32))
    columns[LABEL] = pa.array(labels)
    if timestamp is not None and timestamp in base.column_names:
        columns[timestamp] = base[timestamp].take(context_rows)
    return pa.table(columns)


def _pairs_in(
    users: np.ndarray, items: np.ndarray, in_users: np.ndarray, in_items: np.ndarray
) -> np.ndarray:
    """bool [n]: whether (users[i], items[i]) is one of the pairs (in_users, in_items)."""
    _, codes = np.unique(np.concatenate([items, in_items]), return_inverse=True)
    width = int(codes.max()) + 1 if codes.size else 1
    keys = users.astype(np.int64) * width + codes[: items.size]
    in_keys = in_users.astype(np.int64) * width + codes[items.size :]
    return np.isin(keys, in_keys)
