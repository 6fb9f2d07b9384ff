"""A retrieval model directory, loaded: the two towers, the faiss index and the item catalog.

Written by `streamrec.train.two_tower`; read by the server's retrieval stage and by
`streamrec eval`. Verified like any model directory (checksums in the manifest).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from streamrec.config import JobConfig
from streamrec.models.persistence import load_model
from streamrec.models.two_tower import TwoTower
from streamrec.retrieval.index import IndexParams, Retriever
from streamrec.store import CorruptModelError, find_model_dir

INDEX_FILE = "retrieval/index.faiss"
CATALOG_FILE = "retrieval/catalog.parquet"


@dataclass
class RetrievalModel:
    """model: the towers (eval mode); kinds: each input column's value kind, as trained;
    catalog: item id → that item's feature values (what the ranker scores it with)."""

    model: TwoTower
    config: JobConfig
    kinds: dict[str, str]
    retriever: Retriever
    catalog: dict[int, dict[str, Any]]
    version: int
    path: Path


def load_retrieval_model(directory: Path) -> RetrievalModel:
    loaded = load_model(directory)
    manifest = loaded.manifest
    kinds = loaded.input_kinds
    meta = manifest.retrieval
    if meta is None:
        raise CorruptModelError(f"{directory}: the manifest has no retrieval section")
    retriever = Retriever.from_bytes(
        loaded.directory.read_file(INDEX_FILE),
        meta.dim,
        IndexParams.from_manifest(meta.index),
        meta.tombstones,
    )
    catalog = pq.read_table(io.BytesIO(loaded.directory.read_file(CATALOG_FILE)))
    rows = {
        int(i): r for i, r in zip(catalog["item_id"].to_pylist(), catalog.to_pylist(), strict=True)
    }
    return RetrievalModel(
        loaded.model.eval(),
        loaded.config,
        kinds,
        retriever,
        rows,
        manifest.model_version,
        directory,
    )


def find_retrieval_dir(path: str | Path) -> Path | None:
    """The model directory in `path` (a run or model directory) that holds a retrieval index,
    or None if there is none."""
    try:
        directory = find_model_dir(path)
    except CorruptModelError:
        return None
    return directory if (directory / INDEX_FILE).exists() else None
