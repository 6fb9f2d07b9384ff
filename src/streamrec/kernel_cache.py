"""Keep numba's on-disk kernel cache true to the source, across modules.

numba checks a cached kernel only against the timestamp of the file that defines it. A kernel
that inlines a function from another module (the group resolve kernel in `grouped.py` inlines
`dedup.dedup_range`, the table kernels inline `hashmap.map_find`, …) therefore keeps running the
old machine code after only that other module changed — silently, until its own file changes.
A pip upgrade rewrites every file, so installed users never see this; an editable checkout
does, the moment one kernel module is edited.

`refresh` is called once when streamrec is imported, before any kernel is compiled: it hashes
every module of the package that uses numba and, when the hash differs from the one recorded
beside the cache, deletes the package's cached kernels (numba recompiles them on first use,
~1 minute in all). Unchanged sources cost one hash of ~200 KB per import. Caches kept
elsewhere (NUMBA_CACHE_DIR, or numba's per-user directory when the package is read-only) are
not touched: clear those by hand after editing a kernel module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_STAMP = Path("__pycache__") / "numba-sources.sha256"


def sources_digest(package_dir: Path) -> str:
    """sha256 over the path and bytes of every module under package_dir that imports numba."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_bytes()
        if b"import numba" in text:
            digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + text)
    return digest.hexdigest()


def refresh(package_dir: Path) -> bool:
    """Drop the cached kernels under package_dir if any numba module changed since they were
    written; → True when they were dropped. A read-only install (nothing writable beside the
    sources, so numba caches elsewhere) is left alone."""
    stamp = package_dir / _STAMP
    digest = sources_digest(package_dir)
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        for cached in package_dir.rglob("__pycache__/*.nb[ic]"):
            cached.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        return False
    return True
