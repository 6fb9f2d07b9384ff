"""Deltas: the rows training changed since the last export, for parameter sync to serving.

    DELTAS_DIR/000000000042/      one delta, written atomically like a model directory
      manifest.json               format "streamrec-delta", delta version, the model version it
                                  applies to, event-time range, stream offsets covered, tables
      tables/NNN.safetensors      fids, values (fp32 / fp16 / int8 + scale, offset), deleted fids
      dense.safetensors           (every Nth delta) the dense weights

Deltas apply in version order; each holds the rows touched since the previous one, so a server
that applied delta k−1 applies delta k and is current. A delta applies deletions first, then
upserts (a fid may be deleted and re-admitted within one interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamrec.store.manifest import DELTA_FORMAT, DeltaManifest, parse_manifest
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
    manifest: dict[str, Any],
) -> Path:
    files: dict[str, dict[str, torch.Tensor]] = {}
    entries = {}
    for i, (name, d) in enumerate(sorted(tables.items())):
        rel = f"tables/{i:03d}.safetensors"
        tensors = {"fids": d.fids, "values": d.values, "deleted": d.deleted}
        if d.scale is not None:
            tensors.update(scale=d.scale, offset=d.offset)
        files[rel] = tensors
        entries[name] = {
            "file": rel,
            "rows": int(d.fids.numel()),
            "deleted": int(d.deleted.numel()),
            "dtype": str(d.values.dtype),
        }
    if dense is not None:
        files["dense.safetensors"] = dense
    full = {
        **manifest,
        "version": version,
        "tables": entries,
        "dense": "dense.safetensors" if dense is not None else None,
    }
    return write_model_dir(delta_path(deltas_dir, version), full, files, kind=DELTA_FORMAT)


def list_deltas(deltas_dir: str | Path, after: int = 0) -> list[int]:
    """Versions of the complete deltas in a folder, newer than `after`, oldest first."""
    return list_versions(deltas_dir, after)


def read_delta_manifest(deltas_dir: str | Path, version: int) -> DeltaManifest:
    """A delta's manifest alone (base model version, times): enough to decide whether to read
    the rest — a server skips deltas written for another base without reading their rows."""
    path = delta_path(deltas_dir, version)
    raw = read_manifest_json(path, DELTA_FORMAT)
    return parse_manifest(raw, str(path / "manifest.json"))  # type: ignore[return-value]


def read_delta(
    deltas_dir: str | Path, version: int, manifest: DeltaManifest | None = None
) -> tuple[DeltaManifest, dict[str, TableDelta], dict[str, torch.Tensor] | None]:
    path = delta_path(deltas_dir, version)
    if manifest is None:
        manifest = read_delta_manifest(deltas_dir, version)
    tables = {}
    for name, entry in manifest.tables.items():
        t = read_tensors(path, entry.file, manifest)
        tables[name] = TableDelta(
            t["fids"], t["values"], t["deleted"], t.get("scale"), t.get("offset")
        )
        _require_finite(path, f"table {name}", tables[name].weights(), t["fids"])
    dense = read_tensors(path, manifest.dense, manifest) if manifest.dense else None
    for key, tensor in (dense or {}).items():
        _require_finite(path, f"dense weight {key}", tensor)
    return manifest, tables, dense


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
