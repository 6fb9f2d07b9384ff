"""Save a RankingModel into a model directory and build it back from one.

The manifest carries the whole job config (with the fitted schema), so `load_model` needs
nothing but the directory: it rebuilds the model from the config, then loads the dense weights
and every DynamicTable, verifying checksums on the way (see `streamrec.store`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from streamrec.config import JobConfig, parse_config
from streamrec.embedding.quantized_rows import ROW_PRECISIONS, worth_quantizing
from streamrec.embedding.tiered import private_dir
from streamrec.models.base import RankingModel
from streamrec.models.registry import build_model
from streamrec.schema import Schema
from streamrec.store import ModelDir, write_model_dir
from streamrec.store.manifest import ModelManifest
from streamrec.table_config import TableConfig


@dataclass
class LoadedModel:
    model: RankingModel
    config: JobConfig
    manifest: ModelManifest
    path: Path

    @property
    def directory(self) -> ModelDir:
        """The directory it was loaded from, with its manifest (read no second time)."""
        return ModelDir(self.path, self.manifest)

    @property
    def input_kinds(self) -> dict[str, str]:
        """How every reader reads each input column of this model (`saved_input_kinds`)."""
        return saved_input_kinds(self.manifest, self.config.schema)


def saved_input_kinds(manifest: ModelManifest, schema: Schema) -> dict[str, str]:
    """The one answer to "how is input column c read" for a saved model or checkpoint —
    serving, evaluation, batch scoring, online training and resumption all ask here: the kind
    recorded when it was trained, else the schema's declaration, else a string (models saved
    before kinds were recorded hashed every undeclared column as text)."""
    saved, declared = manifest.input_kinds, schema.declared_kinds()
    return {
        c: saved.get(c) or declared.get(c) or "string"
        for c in schema.input_columns(with_labels=False)
    }


def model_files(
    model: RankingModel,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(manifest fragment, tensor files, directory writers) describing the model's dense part
    and tables. A tiered table is its DRAM tier's tensors plus a folder `tables/NNN.disk`: a
    checkpoint of its disk tier, hard-linked (`TieredTable.checkpoint_cold`)."""
    files: dict[str, dict[str, torch.Tensor]] = {"dense.safetensors": model.dense_state_dict()}
    directories: dict[str, Any] = {}
    tables = {}
    for i, (name, table) in enumerate(sorted(model.dynamic_tables().items())):
        rel = f"tables/{i:03d}.safetensors"
        tables[name] = {
            "file": rel,
            "rows": len(table),
            "dim": table.dim,
            "version": table.version,
            "config": table.settings.model_dump(),
            "row_precision": table.row_precision,
        }
        files[rel], write_disk_tier = table.saved_form()
        if write_disk_tier is not None:
            tables[name]["disk_tier"] = directory = f"tables/{i:03d}.disk"
            directories[directory] = write_disk_tier
    return {"tables": tables}, files, directories


def schema_kinds(schema: Schema) -> dict[str, str]:
    """Every input column's kind, as the schema declares it (a fitted schema: all of them)."""
    kinds = schema.declared_kinds()
    unknown = [c for c in schema.input_columns(with_labels=False) if c not in kinds]
    if unknown:
        raise ValueError(
            f"the schema does not say how to read {unknown} (int ids, or strings to hash): "
            "declare `kind:` on those features, or fit the schema on a data sample "
            "(Schema.fit) before saving"
        )
    return {c: kinds[c] for c in schema.input_columns(with_labels=False)}


def save_model(
    path: str | Path,
    model: RankingModel,
    config: JobConfig,
    extra_manifest: dict[str, Any] | None = None,
    extra_tensor_files: dict[str, dict[str, torch.Tensor]] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a model directory. Its `input_kinds` (how every reader reads each input column)
    come from `extra_manifest`, else from the schema — a fitted schema declares every one;
    a schema that leaves some undeclared is refused rather than served with guessed types."""
    fragment, files, directories = model_files(model)
    fields = {
        "created": time.time(),
        "model_version": int(time.time() * 1000),
        "config": config.to_dict(),
        "schema": model.schema.model_dump(mode="json"),
        **fragment,
        **(extra_manifest or {}),
    }
    if not fields.get("input_kinds"):
        fields["input_kinds"] = schema_kinds(model.schema)
    files.update(extra_tensor_files or {})
    return write_model_dir(path, fields, files, extra_files, directories=directories)


def load_model(
    path: str | Path | ModelDir,
    pause: Callable[[], None] | None = None,
    storage: Literal["private", "configured"] = "private",
) -> LoadedModel:
    """Rebuild a saved model. `pause`, when given, is called between the steps of the load
    (after building the model, after the dense weights, after each table): a server loading
    a new version beside the served one sleeps there, so the load never holds the GIL long
    enough for requests to queue up behind it.

    Tiered tables (`storage:` in their settings) get a working copy of their disk tier:
    `private` (servers, evaluation, tools) in a fresh folder beside the model directory,
    removed when the table is closed or collected — never the trainer's folder;
    `configured` (a trainer resuming) in the folder the settings name."""
    step = pause or (lambda: None)
    model_dir = ModelDir.open(path)
    directory, manifest = model_dir.path, model_dir.manifest
    config = parse_config(manifest.config, source=str(directory / "manifest.json"))
    config.schema_ = config.schema_.model_validate(manifest.schema_)
    table_configs = config.table_configs()
    if storage == "private" and any(c.storage for c in table_configs.values()):
        table_configs = _private_storage(table_configs, private_dir(directory.parent))
    model = build_model(config.model, config.schema_, table_configs)
    step()
    model.load_dense_state_dict(model_dir.read_tensors("dense.safetensors"))
    step()
    tables = model.dynamic_tables()
    for name, entry in manifest.tables.items():
        if name not in tables:
            raise ValueError(f"{directory}: the model has no table {name!r}")
        hot = model_dir.open_tensors(entry.file)
        table = tables[name]
        disk = entry.disk_tier
        try:
            table.load_saved(hot, model_dir.check_directory(disk) if disk else None)
        except ValueError as e:
            raise ValueError(f"{directory}: {e}") from None
        if table.row_precision != entry.row_precision:
            raise ValueError(
                f"{directory}: table {name!r}: the manifest says {entry.row_precision} rows, "
                f"but {entry.file} holds {table.row_precision} rows"
            )
        step()
    model.eval()
    return LoadedModel(model, config, manifest, directory)


def _private_storage(configs: dict[str, TableConfig], root: Path) -> dict[str, TableConfig]:
    """The same settings with every tiered table's working folder under `root`."""
    out = {}
    for name, cfg in configs.items():
        if cfg.storage is not None:
            storage = cfg.storage.model_copy(update={"path": str(root)})
            cfg = cfg.model_copy(update={"storage": storage})
        out[name] = cfg
    return out


def export_for_serving(
    src: str | Path, dst: str | Path, drop_zero_rows: bool = False, row_precision: str = "fp32"
) -> dict[str, Any]:
    """A serving copy of a model directory: no optimizer state (tables switch to SGD, which
    keeps none), no admission sketches, optionally without rows that are exactly zero (FTRL
    with L1 leaves many; a missing id reads the zero default row, so scores do not change), and
    optionally with fewer-bit rows: `row_precision` int16 / int8 stores each row as codes with
    a per-row scale and offset (`embedding/quantized_rows.py`) in every table where that takes
    fewer bytes than fp32 and that has no disk tier. → a size report (bytes of whole tables,
    and of their weights alone), with each table's precision."""
    if row_precision not in ROW_PRECISIONS:
        raise ValueError(f"row precision must be one of {ROW_PRECISIONS}, got {row_precision!r}")
    loaded = load_model(src)
    before = after = weights_before = weights_after = 0
    dropped = 0
    precisions = {}
    for name, table in sorted(loaded.model.dynamic_tables().items()):
        before += sum(table.memory_bytes().values())
        weights_before += table.memory_bytes()["weights"]
        if drop_zero_rows:
            rows = table.live_rows()
            zero = rows[np.abs(table.gather_rows(rows)).sum(axis=1) == 0]
            dropped += int(zero.size)
            table.remove_rows(zero)
        table.drop_optimizer_state()
        table.drop_admission_state()
        if worth_quantizing(table.dim, row_precision) and not table.has_disk_tier:
            table.set_row_precision(row_precision)
        precisions[name] = table.row_precision
        after += sum(table.memory_bytes().values())
        weights_after += table.memory_bytes()["weights"]
    config = loaded.config.model_copy(deep=True)
    config.default_table.optimizer = "sgd"
    for cfg in config.tables.values():
        cfg.optimizer = "sgd"
    manifest = loaded.manifest
    # The same model_version and delta position: the trainer's deltas for the source apply to
    # the copy, so a copy with fewer-bit rows follows the stream like the model it came from.
    extra = manifest.model_dump(
        mode="json",
        include={"input_kinds", "metrics", "model_type", "retrieval", "model_version",
                 "last_delta_version"},
        exclude_none=True,
    )
    extra["exported_from"] = {"path": str(loaded.path), "model_version": manifest.model_version}
    out = save_model(dst, loaded.model, config, extra)
    return {
        "model_dir": str(out),
        "table_bytes_before": before,
        "table_bytes_after": after,
        "weight_bytes_before": weights_before,
        "weight_bytes_after": weights_after,
        "zero_rows_dropped": dropped,
        "row_precision": precisions,
    }
