"""Deltas: the rows training changed since the last export, for parameter sync to serving.

    DELTAS_DIR/000000000042/      one delta, written atomically like a model directory
      manifest.json               format "streamrec-delta", delta version, the model version it
                                  applies to, event-time range, stream offsets covered, tables
      tables/NNN.safetensors      fids, values (fp32 / fp16 / int8 + scale, offset), deleted
                                  fids, and each row's count (times training saw the id)
      dense.safetensors           (every Nth delta) the dense weights

Deltas apply in version order; each holds the rows touched since the previous one, so a server
that applied delta k−1 applies delta k and is current. A delta applies deletions first, then
upserts (a fid may be deleted and re-admitted within one interval).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from streamrec.store.manifest import DELTA_FORMAT, DeltaManifest, DeltaProgress, parse_manifest
from streamrec.store.model_dir import (
    CorruptModelError,
    read_manifest_json,
    read_tensors,
    write_model_dir,
)
from streamrec.store.versions import list_versions, version_path


@dataclass
class TableDelta:
    fids: torch.Tensor  # int64 [n]
    values: torch.Tensor  # [n, dim]: float32 / float16, or uint8 with scale & offset
    deleted: torch.Tensor  # int64 [m]
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    counts: torch.Tensor | None = None  # int32 [n]: times training saw each id (uncertainty)

    def weights(self) -> torch.Tensor:
        """float32 [n, dim]."""
        if self.scale is not None:
            return self.values.float() * self.scale[:, None] + self.offset[:, None]
        return self.values.float()


def delta_path(deltas_dir: str | Path, version: int) -> Path:
    return version_path(deltas_dir, version)


def write_delta(
    deltas_dir: str | Path,
    version: int,
    tables: dict[str, TableDelta],
    dense: dict[str, torch.Tensor] | None,
    *,
    base_model_version: int,
    precision: str,
    full: bool,
    progress: DeltaProgress | None = None,
) -> Path:
    """Write delta `version` atomically; its manifest is built here from typed parts (and
    checked against `DeltaManifest` before anything is written)."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    entries = {}
    for i, (name, d) in enumerate(sorted(tables.items())):
        rel = f"tables/{i:03d}.safetensors"
        tensors = {"fids": d.fids, "values": d.values, "deleted": d.deleted}
        if d.scale is not None:
            tensors.update(scale=d.scale, offset=d.offset)
        if d.counts is not None:
            tensors["counts"] = d.counts
        files[rel] = tensors
        entries[name] = {
            "file": rel,
            "rows": int(d.fids.numel()),
            "deleted": int(d.deleted.numel()),
            "dtype": str(d.values.dtype),
        }
    if dense is not None:
        files["dense.safetensors"] = dense
    manifest = {
        **(progress or DeltaProgress()).model_dump(exclude_none=True),
        "base_model_version": base_model_version,
        "created": time.time(),
        "precision": precision,
        "full": full,
        "version": version,
        "tables": entries,
        "dense": "dense.safetensors" if dense is not None else None,
    }
    return write_model_dir(delta_path(deltas_dir, version), manifest, files, kind=DELTA_FORMAT)


def list_deltas(deltas_dir: str | Path, after: int = 0) -> list[int]:
    """Versions of the complete deltas in a folder, newer than `after`, oldest first."""
    return list_versions(deltas_dir, after)


@dataclass(frozen=True)
class DeltaDir:
    """One delta directory, its manifest read and validated once. The manifest alone (base
    model version, times) decides whether to read the rest: a server skips a delta written for
    another base without reading its rows."""

    path: Path
    manifest: DeltaManifest

    @classmethod
    def open(cls, deltas_dir: str | Path, version: int) -> DeltaDir:
        path = delta_path(deltas_dir, version)
        raw = read_manifest_json(path, DELTA_FORMAT)
        manifest = parse_manifest(raw, str(path / "manifest.json"))
        assert isinstance(manifest, DeltaManifest)  # read_manifest_json checked the format
        return cls(path, manifest)

    @property
    def version(self) -> int:
        return self.manifest.version

    def read(self) -> Delta:
        """Its rows and dense weights, every file checked against the manifest and every value
        finite (CorruptModelError otherwise)."""
        tables = {}
        for name, entry in self.manifest.tables.items():
            t = read_tensors(self.path, entry.file, self.manifest)
            tables[name] = TableDelta(
                t["fids"], t["values"], t["deleted"], t.get("scale"), t.get("offset"),
                t.get("counts"),
            )
            _require_finite(self.path, f"table {name}", tables[name].weights(), t["fids"])
            _require_counts(self.path, name, tables[name])
        dense = None
        if self.manifest.dense:
            dense = read_tensors(self.path, self.manifest.dense, self.manifest)
        for key, tensor in (dense or {}).items():
            _require_finite(self.path, f"dense weight {key}", tensor)
        return Delta(self.manifest, tables, dense)


@dataclass(frozen=True)
class Delta:
    """A delta as read: its manifest, each table's rows, and the dense weights (or None)."""

    manifest: DeltaManifest
    tables: dict[str, TableDelta]
    dense: dict[str, torch.Tensor] | None


def read_delta(deltas_dir: str | Path, version: int) -> Delta:
    return DeltaDir.open(deltas_dir, version).read()


def _require_counts(path: Path, name: str, rows: TableDelta) -> None:
    """A delta's counts, when it has them, are one non-negative integer per row: anything else
    is refused whole (applied, they would misstate how sure a linear model is)."""
    c = rows.counts
    if c is None:
        return
    if c.dtype.is_floating_point or c.shape != rows.fids.shape or bool((c < 0).any()):
        raise CorruptModelError(
            f"{path}: table {name}: counts must be one non-negative integer per row "
            f"({tuple(c.shape)} {c.dtype} for {rows.fids.numel()} rows)"
        )


def _require_finite(
    path: Path, what: str, values: torch.Tensor, fids: torch.Tensor | None = None
) -> None:
    """A delta whose rows hold NaN or inf is refused whole, as a corrupt one is (a valid
    checksum only says the bytes arrived as written): applied, it would turn every request
    that reads those rows into an error until a later delta replaced each of them."""
    if not values.is_floating_point() or values.numel() == 0:
        return
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = ~finite.reshape(finite.shape[0], -1).all(dim=1) if finite.dim() else finite.reshape(1)
    first = f" (first fid {int(fids[bad][0])})" if fids is not None and values.dim() > 1 else ""
    raise CorruptModelError(
        f"{path}: {what}: {int(bad.sum()):,} rows hold NaN or inf{first} — the trainer "
        "diverged or wrote bad values; the server keeps the last good rows"
    )
