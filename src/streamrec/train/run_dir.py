"""The run directory of a training job: one writer at a time, and a start that continues from
exactly what the previous writer left — or refuses, saying why.

    RUN/.lock              held (flock) by the one trainer writing here; holds its PID
    RUN/checkpoint/NNN/    versioned checkpoints (`store/versions.py`), newest last
    RUN/deltas/NNN/        deltas for the server
    RUN/model/             the final model of a batch run

The lock is an OS file lock: a process killed with -9 releases it with its file descriptors, so
a restart never waits on a dead holder. Start-up (`RunDir.open`) takes the lock, undoes a
directory replacement interrupted between its two renames, and removes what interrupted
writers left (`.NAME.tmp-*`), which is safe only because no other writer can be mid-write.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from streamrec.store import CorruptModelError
from streamrec.store.atomic import recover_dir, remove_temporaries
from streamrec.store.delta import DeltaDir, list_deltas
from streamrec.store.model_dir import MANIFEST
from streamrec.store.versions import load_newest, write_version

T = TypeVar("T")

LOCK = ".lock"
CHECKPOINTS = "checkpoint"
DELTAS = "deltas"


BEST = "best"  # the best validation epoch's model (Trainer.save_best)

class RunDirBusy(RuntimeError):
    """Another process is training into this run directory."""


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self.deltas = self.path / DELTAS
        self._lock_fd: int | None = None

    def open(self) -> RunDir:
        """Take the writer lock, then tidy what a killed writer left. → self."""
        self.lock()
        for name in (CHECKPOINTS, "model", BEST):
            recover_dir(self.path / name)  # killed between the two renames of a replacement
        for folder in (self.path, self.checkpoints, self.deltas):
            remove_temporaries(folder)
        return self

    # ------------------------------------------------------------------ the lock
    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"{self.path} is in use by another trainer (pid {holder}); stop it, or give "
                "this run another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __del__(self) -> None:
        self.release()

    def start_afresh(self) -> None:
        """A fresh run in an existing directory: the checkpoints, best model, curves and status
        of an earlier run there are not this run's, and `--resume` must not find them."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        shutil.rmtree(self.path / BEST, ignore_errors=True)
        shutil.rmtree(self.path / "tb", ignore_errors=True)
        (self.path / "metrics.csv").unlink(missing_ok=True)
        (self.path / "status.json").unlink(missing_ok=True)
        (self.path / "mlflow_run_id").unlink(missing_ok=True)  # that run was the earlier one's

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, write: Callable[[Path], Path], keep: int = 2) -> Path:
        """`write(path)` a checkpoint as the next version; the newest `keep` are kept."""
        return write_version(self.checkpoints, write, keep)

    def load_checkpoint(self, load: Callable[[Path], T]) -> T | None:
        """`load` the newest readable checkpoint; None for a run with no earlier state.

        Raises CorruptModelError when the directory shows earlier training (a checkpoint that
        no longer reads, or deltas written after a checkpoint that is gone): continuing from
        nothing would silently drop that training.
        """
        loaded = load_newest(self.checkpoints, load)
        if loaded is None and (self.checkpoints / MANIFEST).exists():
            loaded = load(self.checkpoints)
        if loaded is None:
            lost = self._checkpoint_named_by_deltas()
            if lost:
                raise CorruptModelError(
                    f"{self.path}: its deltas were written after checkpoint {lost}, but "
                    f"{self.checkpoints} holds no checkpoint — starting over would lose that "
                    "training. Restore the checkpoint, or start a new run directory"
                )
        return loaded

    def _checkpoint_named_by_deltas(self) -> int:
        versions = list_deltas(self.deltas)
        if not versions:
            return 0
        try:
            newest = DeltaDir.open(self.deltas, versions[-1])
        except CorruptModelError:
            return 0
        return newest.manifest.checkpoint_version
