"""Applying one delta to a served model in place: its rows, its deletions, its dense weights.

The one place a delta changes a model on the serving side — the ranker's snapshot, the
pre-ranker's, and the retrieval stage's towers (`retrieval_stage.py`) all call it. The caller
decides when it is safe (the ranker: on its worker between batches; the retriever: on a copy
no request reads).
"""

from __future__ import annotations

import numpy as np

from streamrec.models.with_tables import WithTables
from streamrec.store.delta import Delta


def apply_delta(model: WithTables, delta: Delta) -> None:
    """Upsert each table's changed rows and delete its removed ids (a full snapshot delta also
    drops every row it does not hold); load the dense weights when the delta carries them."""
    own = model.dynamic_tables()
    for name, rows in delta.tables.items():
        table = own.get(name)
        if table is None:
            continue
        if delta.manifest.full:  # a snapshot: rows it does not hold are gone
            live = table.live_fids()
            table.delete(live[~np.isin(live, rows.fids.numpy())])
        if rows.deleted.numel():
            table.delete(rows.deleted.numpy())
        if rows.fids.numel():
            counts = None if rows.counts is None else rows.counts.numpy()
            table.upsert(rows.fids.numpy(), rows.weights().numpy(), counts=counts)
        if table.has_disk_tier:
            table.trim()  # upserted rows came up to DRAM; the budget holds
    if delta.dense is not None:
        model.load_dense_state_dict(delta.dense)
