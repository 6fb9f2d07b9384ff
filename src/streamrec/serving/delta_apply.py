"""Applying one delta to a served model in place: its rows, its deletions, its dense weights.

The one place a delta changes a model on the serving side — the ranker's snapshot, the
pre-ranker's, and the retrieval stage's towers (`retrieval_stage.py`) all call it. The caller
decides when it is safe (the ranker: on its worker between batches; the retriever: on a copy
no request reads).
"""

from __future__ import annotations

import numpy as np
import torch

from streamrec.models.with_tables import WithTables
from streamrec.store.delta import TableDelta
from streamrec.store.manifest import DeltaManifest


def apply_delta(
    model: WithTables,
    manifest: DeltaManifest,
    tables: dict[str, TableDelta],
    dense: dict[str, torch.Tensor] | None,
) -> None:
    """Upsert each table's changed rows and delete its removed ids (a full snapshot delta also
    drops every row it does not hold); load the dense weights when the delta carries them."""
    own = model.dynamic_tables()
    for name, delta in tables.items():
        table = own.get(name)
        if table is None:
            continue
        if manifest.full:  # a snapshot: rows it does not hold are gone
            live = table.live_fids()
            table.delete(live[~np.isin(live, delta.fids.numpy())])
        if delta.deleted.numel():
            table.delete(delta.deleted.numpy())
        if delta.fids.numel():
            table.upsert(delta.fids.numpy(), delta.weights().numpy())
        if table.has_disk_tier:
            table.trim()  # upserted rows came up to DRAM; the budget holds
    if dense is not None:
        model.load_dense_state_dict(dense)
