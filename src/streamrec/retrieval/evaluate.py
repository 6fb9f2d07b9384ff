"""Retrieval quality under a per-user time split: recall@k and NDCG@k of each user's next items.

For every user with test interactions, the query is the user as of the end of their training
history; items the user already interacted with in training are excluded from the ranking.
recall@k = |top-k ∩ test items| / |test items|; NDCG@k with binary relevance, normalised by the
ideal ordering of min(k, |test items|) hits; both averaged over users.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def user_items(
    table: pa.Table, user: str = "user_id", item: str = "item_id"
) -> dict[int, list[int]]:
    """user → items in log order."""
    users = table[user].to_numpy()
    items = table[item].to_numpy()
    out: dict[int, list[int]] = {}
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        out.setdefault(u, []).append(i)
    return out


def ranking_metrics(
    recommended: dict[int, list[int]], relevant: dict[int, set[int]], ks: tuple[int, ...] = (10, 50)
) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for user, truth in relevant.items():
        recs = recommended.get(user, [])
        for k in ks:
            hits = [1.0 if r in truth else 0.0 for r in recs[:k]]
            out.setdefault(f"recall@{k}", []).append(sum(hits) / len(truth))
        k = 10
        gains = [1.0 / np.log2(pos + 2) for pos, r in enumerate(recs[:k]) if r in truth]
        ideal = sum(1.0 / np.log2(pos + 2) for pos in range(min(k, len(truth))))
        out.setdefault("ndcg@10", []).append(sum(gains) / ideal)
    return {name: float(np.mean(values)) for name, values in out.items()}


def popularity_recommendations(
    train: pa.Table, users: list[int], k: int, seen: dict[int, list[int]], item: str = "item_id"
) -> dict[int, list[int]]:
    counts = pc.value_counts(train[item].combine_chunks())
    order = np.argsort(-counts.field("counts").to_numpy(), kind="stable")
    ranked = counts.field("values").to_numpy()[order].tolist()
    out = {}
    for u in users:
        skip = set(seen.get(u, []))
        out[u] = [i for i in ranked if i not in skip][:k]
    return out
