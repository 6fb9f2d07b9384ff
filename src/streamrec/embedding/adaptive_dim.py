"""Frequency-adaptive embedding widths (DeepRec's dynamic dimension; "FAE"): most ids of a
long-tailed feature are seen a handful of times and cannot fill a full row with signal, yet
each costs one — so a table with `rare_dim` stores two parts:

    NAME            rare_dim values for every admitted id            (the table's own admission)
    NAME@frequent   dim − rare_dim more for ids seen `promote_after` times

and an id's embedding is [rare part | frequent part or zeros]: an id is promoted by being
admitted to the second table, which happens when its count in the first — exact, the count
LFU eviction keeps — reaches `promote_after` (`DynamicTable.promoted_from`).
Both parts are ordinary `DynamicTable`s, so eviction, TTL, checkpoints, deltas, serving,
tiered storage and fewer-bit rows treat them like any table; `EmbeddingCollection` looks both
up and concatenates them (collection.py).
"""

from __future__ import annotations

from streamrec.embedding.table import DynamicTable
from streamrec.embedding.tiered import build_table
from streamrec.table_config import TableConfig

FREQUENT = "@frequent"  # the suffix of a table's second part


def split_settings(settings: TableConfig) -> tuple[TableConfig, TableConfig | None]:
    """(the rare part's settings, the frequent part's — None for a table without `rare_dim`).
    The frequent part admits an id once seen `promote_after` times; its rows start from
    another seed than the rare part's."""
    if settings.rare_dim is None:
        return settings, None
    rare = settings.model_copy(update={"dim": settings.rare_dim, "rare_dim": None})
    frequent = settings.model_copy(update={
        "dim": settings.dim - settings.rare_dim,
        "rare_dim": None,
        "admit_min_count": settings.promote_after,
        "admit_probability": None,
        "sketch_width": 1,  # unused: the rare part's exact counts decide (`build_tables`)
        "seed": settings.seed ^ 0x5EED_F4E,
    })
    return rare, frequent


def build_tables(settings: dict[str, TableConfig]) -> dict[str, DynamicTable]:
    """The tables these settings describe, by name: one per entry, and for an entry with
    `rare_dim` its frequent part too (`NAME@frequent`)."""
    out: dict[str, DynamicTable] = {}
    for name, cfg in settings.items():
        rare, frequent = split_settings(cfg)
        out[name] = build_table(rare, name=name)
        if frequent is not None:
            part = out[name + FREQUENT] = build_table(frequent, name=name + FREQUENT)
            part.promoted_from = out[name]  # promotion by the rare part's exact counts
    return out
