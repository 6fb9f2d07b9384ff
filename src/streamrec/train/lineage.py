"""A trained model's lineage: the parent it was warm-started from, the data files it read
(sizes and SHA-256), a hash of its config, and the code that trained it.

Why: a daily retrain replaces yesterday's model; when a new one is worse, the first questions
are "which data, which config, which code, started from what" — the manifest answers them
(`streamrec push` shows them next to its gate).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

from streamrec import __version__
from streamrec.config import JobConfig
from streamrec.store.manifest import DataFile, Lineage, ParentModel

_CHUNK = 1 << 20


def lineage(config: JobConfig, parent: ParentModel | None = None) -> Lineage:
    data = config.data
    paths = [p for p in [data.train, *data.valid] if p]
    return Lineage(
        parent=parent,
        data_format=data.format,
        data=[f for p in paths for f in _data_files(Path(p))],
        config_sha256=hashlib.sha256(
            json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
        ).hexdigest(),
        code_version=code_version(),
    )


def _data_files(path: Path) -> list[DataFile]:
    """The file, or every file under a folder (sorted), hashed; nothing for a path that is not
    there (a built-in dataset read from a package)."""
    if path.is_file():
        return [_hashed(path)]
    if path.is_dir():
        return [_hashed(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return []


def _hashed(path: Path) -> DataFile:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return DataFile(path=str(path.resolve()), bytes=path.stat().st_size, sha256=digest.hexdigest())


@functools.cache
def code_version() -> str:
    """`0.1.0`, or `0.1.0+g<commit>` (`-dirty` with uncommitted changes) from a checkout."""
    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + ("-dirty" if dirty else "") if commit else __version__
