"""Freshness for the retrieval stage: a thread that serves the retriever's new deltas.

Every `poll_seconds` it reads (checksummed) the deltas newer than the served one, in version
order, and hands them to `RetrievalStage.apply_deltas` together — one re-index for a backlog,
not one per delta. As for the ranker (`watcher.py`): a delta written for another base model is
skipped and counted; one that does not read or does not fit is quarantined (logged, counted,
listed by /v1/model) and the ones after it are still served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from streamrec.serving.retrieval_stage import RetrievalStage
from streamrec.serving.watcher import (
    WATCHER_NICENESS,
    lower_thread_priority,
    short_gil_slices,
    yield_to_requests,
)
from streamrec.store import CorruptModelError
from streamrec.store.delta import Delta, DeltaDir, list_deltas

log = logging.getLogger("streamrec.serving")


class RetrievalWatcher(threading.Thread):
    def __init__(
        self,
        stage: RetrievalStage,
        deltas_dir: Path,
        swap: Callable[[Callable[[], None]], None],
        poll_seconds: float = 0.5,
    ) -> None:
        super().__init__(name="streamrec-retrieval-watcher", daemon=True)
        self.stage = stage
        self.deltas_dir = deltas_dir
        self.swap = swap  # runs a function where requests run (see apply_deltas)
        self.poll = poll_seconds
        self.deltas_skipped = 0  # written for another base model
        self.quarantined: dict[int, str] = {}
        self.errors: list[str] = []
        self._seen = 0  # the newest version read (applied, skipped or quarantined)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        lower_thread_priority(WATCHER_NICENESS)  # re-indexing is background work
        while not self._stop.wait(self.poll):
            try:
                self.check_deltas()
            except Exception as e:  # keep serving the current towers; report the problem
                self.errors.append(str(e))
                del self.errors[:-10]
                log.warning("retrieval freshness check failed: %s", e)

    def check_deltas(self) -> None:
        after = max(self._seen, self.stage.delta_version)
        pending: list[Delta] = []
        for version in list_deltas(self.deltas_dir, after=after):
            if version in self.quarantined:
                continue
            try:
                directory = DeltaDir.open(self.deltas_dir, version)
                base = directory.manifest.base_model_version
                if base is not None and base != self.stage.version:
                    self.deltas_skipped += 1  # another model's: its rows are not read
                    self._seen = version
                    continue
                pending.append(directory.read())
            except (CorruptModelError, KeyError, ValueError, TypeError) as e:
                self._quarantine(version, e)
                break  # serve what came before it; the ones after it, next time
        if not pending:
            return
        try:
            self._apply(pending)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            # RuntimeError: rows or weights that do not fit the towers (torch's error). Which
            # delta? Serve them one at a time next round: the bad one is found and skipped.
            if len(pending) == 1:
                self._quarantine(pending[0].manifest.version, e)
            else:
                self._one_at_a_time(pending)
            return
        self._seen = max(self._seen, pending[-1].manifest.version)

    def _one_at_a_time(self, pending: list[Delta]) -> None:
        for delta in pending:
            version = delta.manifest.version
            try:
                self._apply([delta])
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                self._quarantine(version, e)
            self._seen = max(self._seen, version)

    def _apply(self, deltas: list[Delta]) -> None:
        """As the ranker's watcher loads a model: short GIL slices, and a pause for requests
        between chunks of the re-index, so that serving's p99 does not carry it."""
        with short_gil_slices():
            self.stage.apply_deltas(deltas, self.swap, yield_to_requests)

    def _quarantine(self, version: int, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"[:500]
        self.quarantined[version] = reason
        self._seen = max(self._seen, version)
        log.error("retrieval delta %d quarantined (skipped; later deltas still served): %s",
                  version, reason)
