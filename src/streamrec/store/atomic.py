"""Crash-safe file operations: every write that another process (or the next start) reads goes
through here, so a `kill -9` at any instruction leaves either the old content or the new one.

* `write_synced` writes and fsyncs one file (the caller renames it into place);
* `write_atomic` replaces a small file (a status, a pointer, a committed offset) by
  temp file → fsync → rename → fsync of the folder;
* `replace_dir` puts a complete new directory where an old one stands with one atomic step
  (Linux `renameat2(RENAME_EXCHANGE)`), so there is no moment without either of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import time
from pathlib import Path

TEMP_MARK = ".tmp-"


def temp_sibling(path: Path) -> Path:
    """A hidden name beside `path` that no reader takes for the real thing; unique per writer
    (pid + clock) so two writers never share one."""
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{time.monotonic_ns()}"


def write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace the file `path` with `data`; a reader (or a restart) sees the old or the new."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        write_synced(tmp, data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc ≥ 2.28 (or not Linux)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_renameat2_fn = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the OS or file system cannot."""
    if _renameat2_fn is None:
        return False
    rc = _renameat2_fn(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE
    )
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, path: Path) -> None:
    """Make the complete directory `new` visible as `path`, replacing what is there.

    With RENAME_EXCHANGE the swap is one step and the old copy ends under `new`'s name, to be
    removed. Without it (macOS, some file systems) the old copy is renamed aside first: a kill
    between the two renames leaves `path` missing and the old copy beside it under a hidden
    name — `recover_dir` puts it back on the next start.
    """
    if not path.exists():
        new.rename(path)
    elif exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = path.parent / f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        path.rename(old)
        new.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)


def recover_dir(path: Path) -> None:
    """Undo a replacement that was killed between its two renames (see `replace_dir`)."""
    if path.exists():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        olds[-1].rename(path)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete what interrupted writers left in `folder` (hidden `.NAME.tmp-*` files and
    folders, replaced copies `.NAME.old-*`); → what was removed. Call it only while holding the
    folder's writer lock, never while another writer may be mid-write."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and (TEMP_MARK in p.name or ".old-" in p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
