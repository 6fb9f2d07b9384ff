"""Versioned folders: a folder of numbered, complete directories, newest last.

    ROOT/000000000007/   a complete model (or delta) directory, made visible by one rename
    ROOT/000000000008/
    ROOT/.000000000009.tmp-…   a write in progress (or killed): never read, removed on start

Checkpoints and deltas both live this way. A version appears only once every byte of it is
written and fsync'ed (`write_model_dir` renames the finished temp folder to the new number,
which never existed), so the newest numbered folder is always complete, and the previous one
stays until a newer one is. Readers take the newest that verifies; a writer numbers the next
one after the newest on disk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from streamrec.store.errors import CorruptModelError

# Every directory of the format holds this file, written last: its presence marks it complete.
MANIFEST = "manifest.json"

log = logging.getLogger("streamrec.store")

T = TypeVar("T")


def version_path(root: str | Path, version: int) -> Path:
    return Path(root) / f"{version:012d}"


def list_versions(root: str | Path, after: int = 0) -> list[int]:
    """Numbers of the complete versions in `root` newer than `after`, oldest first."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if p.name.isdigit() and (p / MANIFEST).exists():
            v = int(p.name)
            if v > after:
                found.append(v)
    return sorted(found)


def newest_version(root: str | Path) -> Path | None:
    versions = list_versions(root)
    return version_path(root, versions[-1]) if versions else None


def write_version(root: str | Path, write: Callable[[Path], Path], keep: int = 2) -> Path:
    """`write(path)` the next version (it must write atomically, as `write_model_dir` does),
    then remove all but the newest `keep` versions."""
    versions = list_versions(root)
    path = write(version_path(root, (versions[-1] if versions else 0) + 1))
    for old in list_versions(root)[:-keep]:
        shutil.rmtree(version_path(root, old), ignore_errors=True)
    return path


def load_newest(root: str | Path, load: Callable[[Path], T]) -> T | None:
    """`load` the newest version that loads; an unreadable one is reported and the one before
    it tried. None when `root` holds no version; CorruptModelError (listing every failure) when
    it holds versions and none loads — never a silent fall-back to nothing."""
    failures = []
    for version in reversed(list_versions(root)):
        path = version_path(root, version)
        try:
            return load(path)
        except CorruptModelError as e:
            log.warning("skipping unreadable version %s: %s", path, e)
            failures.append(str(e))
    if failures:
        raise CorruptModelError(
            f"{root}: no version here can be read ({'; '.join(failures)}); restore it from a "
            "backup or start a new run directory"
        )
    return None
