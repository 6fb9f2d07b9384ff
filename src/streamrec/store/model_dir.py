"""The model directory: the on-disk contract between training and serving.

    MODEL_DIR/
      manifest.json            format, version, config (with the fitted schema), table list,
                               trainer state, and the sha256 of every other file
      dense.safetensors        the model's dense parameters and buffers
      tables/NNN.safetensors   one DynamicTable state each (weights, optimizer state, metadata)
      …                        anything else a writer adds (optimizer state, retrieval index)

No pickle anywhere: tensors are safetensors, everything else JSON. A directory is written into a
temporary sibling, every file fsync'ed, then renamed into place, so a reader sees the old model
or the new one, never half of one. Readers verify each file's sha256 before using it and refuse
a corrupt, truncated or missing file with an error that names it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from streamrec.store.atomic import fsync_dir, replace_dir, temp_sibling, write_synced
from streamrec.store.errors import CorruptModelError
from streamrec.store.manifest import (
    MODEL_FORMAT,
    DeltaManifest,
    ModelManifest,
    check_manifest,
    parse_manifest,
)
from streamrec.store.versions import MANIFEST, newest_version

AnyManifest = ModelManifest | DeltaManifest

FORMAT = MODEL_FORMAT
FORMAT_VERSION = 1
__all__ = ["MANIFEST", "CorruptModelError"]  # re-exported: the format's names live here


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> bytes:
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return st_save(clean, metadata=metadata)


@dataclass
class StreamedTensors:
    """A tensor file written piece by piece, never whole in memory (a large table's rows
    straight from their chunks): name → (dtype, shape, pieces), where `pieces()` yields
    arrays whose bytes, in order, are the tensor's. The file is plain safetensors."""

    fields: dict[str, tuple[np.dtype, tuple[int, ...], Callable[[], Iterable[np.ndarray]]]]


def write_streamed(path: Path, tensors: StreamedTensors) -> str:
    """Write `tensors` as a safetensors file at `path`, fsync'ed → its sha256."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items()}
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape, _) in tensors.fields.items():
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": codes[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for block in (struct.pack("<Q", len(text)), text):
            fh.write(block)
            digest.update(block)
        for name, (dtype, _, pieces) in tensors.fields.items():
            written = 0
            for piece in pieces():
                data = np.ascontiguousarray(piece, dtype).tobytes()
                fh.write(data)
                digest.update(data)
                written += len(data)
            begin, end = header[name]["data_offsets"]
            if written != end - begin:
                raise ValueError(f"{path}: {name} wrote {written} bytes, expected {end - begin}")
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def write_model_dir(
    path: str | Path,
    manifest: dict[str, Any],
    tensor_files: dict[str, dict[str, torch.Tensor] | StreamedTensors],
    extra_files: dict[str, bytes] | None = None,
    kind: str = FORMAT,
    directories: dict[str, Callable[[Path], dict[str, str]]] | None = None,
) -> Path:
    """Atomically (re)place `path` with a directory of these files and a checksummed manifest
    (`kind` names the format: a model, or a delta). `directories` maps a folder name to a
    writer that fills it (a tiered table's disk tier, hard-linked) and returns its files'
    checksums, which the manifest lists as `folder/name`."""
    path = Path(path)
    tmp = temp_sibling(path)
    files: dict[str, str] = {}
    try:
        for rel, tensors in tensor_files.items():
            if isinstance(tensors, StreamedTensors):
                files[rel] = write_streamed(tmp / rel, tensors)
                continue
            data = tensors_to_bytes(tensors)
            write_synced(tmp / rel, data)
            files[rel] = sha256(data)
        for rel, data in (extra_files or {}).items():
            write_synced(tmp / rel, data)
            files[rel] = sha256(data)
        sizes: dict[str, int] = {}
        for rel, fill in (directories or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            for name, digest in fill(tmp / rel).items():
                files[f"{rel}/{name}"] = digest
                sizes[f"{rel}/{name}"] = (tmp / rel / name).stat().st_size
            for f in (tmp / rel).iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(tmp / rel)
        full = {"format": kind, "format_version": FORMAT_VERSION, **manifest, "files": files}
        if sizes:
            full["file_sizes"] = sizes
        check_manifest(full, f"{path / MANIFEST} (being written)")  # a writer's drift: loud
        text = json.dumps(_finite(full), indent=1, sort_keys=True, allow_nan=False)
        write_synced(tmp / MANIFEST, text.encode())
        fsync_dir(tmp)
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _finite(obj: Any) -> Any:
    """Strict JSON: a non-finite float (an undefined metric) is written as null, never as the
    bare NaN that strict parsers reject."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def find_model_dir(path: str | Path) -> Path:
    """`path` itself, `path/model` (a training run) or the newest version of `path/checkpoint`
    (an online run; `store/versions.py`). Each candidate may also be a folder of versions."""
    p = Path(path)
    for candidate in (p, p / "model", p / "checkpoint"):
        if (candidate / MANIFEST).exists():
            return candidate
        newest = newest_version(candidate)
        if newest is not None:
            return newest
    raise CorruptModelError(f"{p}: no {MANIFEST} here or in {p / 'model'} — not a model directory")


def find_deltas_dir(path: str | Path) -> Path:
    """The deltas folder that belongs to the model `find_model_dir(path)` finds: `RUN/deltas`
    beside `RUN/model`, and beside `RUN/checkpoint` for a checkpoint version."""
    model = find_model_dir(path)
    in_versions = model.name.isdigit() and model.parent.name == "checkpoint"
    return (model.parent.parent if in_versions else model.parent) / "deltas"


def _member(base: Path, rel: str) -> Path:
    """The file `rel` of a directory, refusing names that lead outside it (`../x`, `/etc/x`,
    symlinks out): a crafted manifest must not make a loader read other files."""
    if not isinstance(rel, str) or not rel:
        raise CorruptModelError(f"{base / MANIFEST}: file name {rel!r} is not a relative path")
    target = (base / rel).resolve()
    root = base.resolve()
    if not target.is_relative_to(root) or target == root:
        raise CorruptModelError(f"{base / MANIFEST}: file name {rel!r} points outside {base}")
    return target


def read_manifest(path: str | Path) -> ModelManifest:
    """The typed manifest of the model directory `path` (a run or model directory) finds."""
    p = find_model_dir(path)
    return parse_manifest(read_manifest_json(p, FORMAT), str(p / MANIFEST))  # type: ignore[return-value]


def manifest_stamp(directory: Path) -> tuple[Path, int, int, int]:
    """(directory, inode, size, mtime ns) of a model directory's manifest file: a cheap
    "is it still the same version" probe. A new version is a new file — a directory is
    replaced whole, by rename — so an equal stamp means nothing to read or parse."""
    st = (directory / MANIFEST).stat()
    return directory, st.st_ino, st.st_size, st.st_mtime_ns


def read_manifest_json(p: Path, kind: str) -> dict[str, Any]:
    """The directory `p`'s manifest.json as JSON, if it is a `kind` manifest this streamrec
    reads (parse it with `parse_manifest`)."""
    try:
        manifest = json.loads((p / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptModelError(f"{p / MANIFEST}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != kind:
        raise CorruptModelError(f"{p / MANIFEST}: not a {kind} manifest")
    version = manifest.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CorruptModelError(
            f"{p / MANIFEST}: format version {version} is newer than this "
            f"streamrec reads ({FORMAT_VERSION}); upgrade streamrec"
        )
    return manifest


def read_file(path: str | Path, rel: str, manifest: AnyManifest) -> bytes:
    """A file of a model (or delta) directory, after checking its sha256 against the manifest."""
    base = Path(path)
    p = _member(base if (base / MANIFEST).exists() else find_model_dir(base), rel)
    expected = manifest.files.get(rel)
    if expected is None:
        raise CorruptModelError(f"{p}: not listed in the manifest")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CorruptModelError(f"{p}: missing or unreadable ({e.strerror})") from None
    if sha256(data) != expected:
        raise CorruptModelError(f"{p}: checksum mismatch — the file is corrupt or truncated")
    return data


def read_tensors(path: str | Path, rel: str, manifest: AnyManifest) -> dict[str, torch.Tensor]:
    data = read_file(path, rel, manifest)
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CorruptModelError(f"{Path(path) / rel}: not a safetensors file ({e})") from None


_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "BOOL": np.bool_,
}


class TensorFile:
    """A safetensors file read lazily with plain reads: `f[name]` loads one tensor, `shape(name)`
    and `slice(name, lo, hi)` read a row range. Not memory-mapped on purpose: mapped file pages
    count in the process's RSS, so a mapped load would hold the file next to the tables it fills
    — reading chunk by chunk keeps a model reload near one extra copy of the model."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "rb")
        (size,) = struct.unpack("<Q", self._fh.read(8))
        header = json.loads(self._fh.read(size))
        header.pop("__metadata__", None)
        self._header = header
        self._base = 8 + size

    def __del__(self) -> None:
        self._fh.close()

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> list[int]:
        return list(self._header[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return torch.from_numpy(np.zeros(0, _DTYPES[self._header[name]["dtype"]])).dtype

    def slice(self, name: str, lo: int, hi: int) -> torch.Tensor:
        info = self._header[name]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = info["shape"]
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        self._fh.seek(self._base + info["data_offsets"][0] + lo * row * dtype.itemsize)
        data = np.fromfile(self._fh, dtype=dtype, count=(hi - lo) * row)
        if dtype.kind == "f" and not np.isfinite(data).all():
            # A checksum says the bytes are as written, not that the writer was sane: served,
            # such rows turn every request that reads them into an error.
            bad = int((~np.isfinite(data.reshape(hi - lo, -1))).any(axis=1).sum())
            raise CorruptModelError(
                f"{self.path}: {name}: {bad:,} rows of {lo}–{hi} hold NaN or inf (the trainer "
                "diverged); this file is not loaded"
            )
        return torch.from_numpy(data.reshape([hi - lo, *shape[1:]]))

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shape(name)
        if not shape:  # a scalar
            info = self._header[name]
            self._fh.seek(self._base + info["data_offsets"][0])
            return torch.from_numpy(
                np.fromfile(self._fh, _DTYPES[info["dtype"]], 1)[0:1].reshape(())
            )
        return self.slice(name, 0, shape[0])


def open_tensors(path: str | Path, rel: str, manifest: AnyManifest) -> TensorFile:
    """Like `read_tensors`, but the checksum is computed streaming and the tensors stay on disk
    until read."""
    base = Path(path)
    p = _member(base if (base / MANIFEST).exists() else find_model_dir(base), rel)
    expected = manifest.files.get(rel)
    if expected is None:
        raise CorruptModelError(f"{p}: not listed in the manifest")
    digest = hashlib.sha256()
    try:
        with open(p, "rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
    except OSError as e:
        raise CorruptModelError(f"{p}: missing or unreadable ({e.strerror})") from None
    if digest.hexdigest() != expected:
        raise CorruptModelError(f"{p}: checksum mismatch — the file is corrupt or truncated")
    try:
        return TensorFile(p)
    except Exception as e:  # safetensors raises its own error types
        raise CorruptModelError(f"{p}: not a safetensors file ({e})") from None


@dataclass(frozen=True)
class ModelDir:
    """One model directory: found once (a run directory → `model/`, an online run → its newest
    checkpoint) and its manifest read and validated once; every file of it is then read
    through here, each checked against that manifest. A loader holds one of these instead of
    a path it would resolve again and a manifest it would read again."""

    path: Path
    manifest: ModelManifest

    @classmethod
    def open(cls, path: str | Path | ModelDir) -> ModelDir:
        if isinstance(path, ModelDir):
            return path
        directory = find_model_dir(path)
        return cls(directory, read_manifest(directory))

    def read_file(self, rel: str) -> bytes:
        return read_file(self.path, rel, self.manifest)

    def read_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        return read_tensors(self.path, rel, self.manifest)

    def open_tensors(self, rel: str) -> TensorFile:
        return open_tensors(self.path, rel, self.manifest)

    def check_directory(self, rel: str) -> Path:
        return check_directory(self.path, rel, self.manifest)

    def stamp(self) -> tuple[Path, int, int, int]:
        """`manifest_stamp`: has this directory been replaced since it was opened?"""
        return manifest_stamp(self.path)


def verify(path: str | Path) -> ModelManifest:
    """Check every file of a model directory; returns the manifest."""
    manifest = read_manifest(path)
    for rel in manifest.files:
        read_file(path, rel, manifest)
    return manifest


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_directory(path: str | Path, rel: str, manifest: AnyManifest) -> Path:
    """The folder `rel` of a model directory (a tiered table's disk tier), after checking that
    it holds exactly the files the manifest lists under it, each with its sha256 → the folder.

    Every file is verified when a model or checkpoint is loaded, SSTs included: RocksDB checks
    a block only when a read touches it, which would turn a flipped byte into a failed request
    (or a training crash) long after the load said "ok". An SST never changes once written,
    so a file already verified by this process (same device, inode, size and mtime — a model
    version sharing SSTs with the one before, hard-linked) is not hashed again, and the rest
    are hashed on several threads (hashlib releases the GIL)."""
    base = Path(path)
    folder = _member(base, rel)
    listed = {k[len(rel) + 1 :]: v for k, v in manifest.files.items()
              if k.startswith(rel + "/")}
    if not folder.is_dir():
        raise CorruptModelError(f"{folder}: missing (the manifest lists {len(listed)} files)")
    present = {f.name for f in folder.iterdir()}
    if set(listed) - present:
        raise CorruptModelError(f"{folder}: missing {sorted(set(listed) - present)}")
    files = [(folder / name, expected) for name, expected in sorted(listed.items())]
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        sums = list(pool.map(lambda item: _verified_sha256(item[0]), files))
    for (f, expected), actual in zip(files, sums, strict=True):
        if actual != expected:
            raise CorruptModelError(
                f"{f}: checksum mismatch — the file is corrupt or truncated"
                + (" (an SST: every model and checkpoint that hard-links it shares the damage)"
                   if f.suffix == ".sst" else "")
            )
    return folder


_verified: dict[tuple[int, int, int, int], str] = {}  # (dev, inode, size, mtime) → sha256


def _verified_sha256(f: Path) -> str | None:
    """sha256 of f, from `_verified` when this process hashed the same immutable SST before."""
    try:
        st = f.stat()
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if f.suffix == ".sst" and key in _verified:
        return _verified[key]
    try:
        digest = sha256_file(f)
    except OSError:
        return None
    if f.suffix == ".sst":
        _verified[key] = digest
    return digest
