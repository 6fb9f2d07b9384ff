"""Freshness: a thread that picks up new deltas and new model versions while the server runs.

Every `poll_seconds` it
* applies, in version order, the deltas newer than the one applied — read and checksummed here,
  applied in place by the inference worker between batches (no model copy);
* notices a new full model in the model directory (its manifest's model_version changed),
  loads it beside the old one, warms it up on recently served requests, then has the worker
  swap it in atomically; the old model is freed once the swap is done.
Deltas written for another base model are skipped (and counted), never applied to the wrong one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streamrec.serving.batcher import DynamicBatcher, use_compute_threads
from streamrec.serving.snapshot import Snapshot
from streamrec.store import CorruptModelError, read_manifest
from streamrec.store.delta import list_deltas, read_delta, read_delta_manifest

log = logging.getLogger("streamrec.serving")

# Loading a large model (checksums, reads, hash-map rebuild) is background work: at a lower
# CPU priority it takes the cycles the request path leaves idle instead of sharing a core with
# it, which is what keeps p99 flat during a reload on a small machine.
WATCHER_NICENESS = 10


# While the watcher loads a model it competes with the request path for the GIL. CPython hands
# the GIL to a waiting thread only after the holder has run for the switch interval (5 ms by
# default), so every slice the watcher takes could add up to 5 ms to a request. During loads the
# interval is cut to this: the watcher's total work is the same, the waits are 25× shorter.
LOADING_SWITCH_INTERVAL_S = 0.0002


@contextmanager
def _short_gil_slices(interval: float = LOADING_SWITCH_INTERVAL_S) -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# Between the steps of a load (after each table) the watcher sleeps this long: the request
# path then has the GIL to itself and drains what queued while the watcher held it. A load
# takes a few ms longer per table; requests never fall far behind.
LOAD_PAUSE_S = 0.003


def _yield_to_requests() -> None:
    time.sleep(LOAD_PAUSE_S)


def _lower_thread_priority(niceness: int) -> None:
    """Linux applies setpriority to a single thread when given its thread id."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except (AttributeError, OSError) as e:  # not Linux, or not permitted: run at normal priority
        log.info("could not lower the watcher thread's priority: %s", e)


class Watcher(threading.Thread):
    def __init__(
        self,
        batcher: DynamicBatcher,
        model_dir: Path,
        deltas_dir: Path | None,
        poll_seconds: float = 0.5,
        metrics=None,
    ) -> None:  # noqa: ANN001
        super().__init__(name="streamrec-watcher", daemon=True)
        self.batcher = batcher
        self.model_dir = model_dir
        self.deltas_dir = deltas_dir
        self.poll = poll_seconds
        self.metrics = metrics
        self.newest_delta_seen_at: float | None = None
        self.deltas_applied = 0
        self.deltas_skipped = 0
        self.reloads = 0
        self.last_reload: dict[str, float] | None = None  # phases of the latest reload, seconds
        self.errors: list[str] = []
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        _lower_thread_priority(WATCHER_NICENESS)
        use_compute_threads(self.batcher.threads)  # warm-up inference runs on this thread
        while not self._stop.wait(self.poll):
            try:
                self.check_model()
                self.check_deltas()
            except Exception as e:  # keep serving the current model; report the problem
                self.errors.append(str(e))
                del self.errors[:-10]
                log.warning("freshness check failed: %s", e)

    def check_model(self) -> None:
        try:
            manifest = read_manifest(self.model_dir)
        except CorruptModelError:
            return  # mid-replacement or removed: keep the current model
        version = int(manifest.get("model_version", 0))
        if version == self.batcher.snapshot.model_version:
            return
        started = time.time()
        with _short_gil_slices():
            fresh = Snapshot.load(self.model_dir, pause=_yield_to_requests)
            loaded = time.time()
            for table in list(self.batcher.recent_tables):  # warm-up on recorded requests
                _yield_to_requests()
                fresh.predict(table)
        warmed = time.time()

        retired = self.batcher.snapshot

        def swap() -> None:
            self.batcher.snapshot = fresh

        self.batcher.run_control(swap).wait()
        # The old model is freed here, on this low-priority thread, by reference counting (no
        # gc pass): releasing a large model's chunks takes milliseconds the worker should not.
        swapped = time.time()
        del retired
        self.last_reload = {
            "model_version": fresh.model_version,
            "started": started,
            "load_s": loaded - started,
            "warmup_s": warmed - loaded,
            "swap_s": swapped - warmed,
            "free_s": time.time() - swapped,
        }
        log.info("reloaded model %s: %s", fresh.model_version, self.last_reload)
        self.reloads += 1
        if self.metrics is not None:
            self.metrics.reloads.inc()

    def check_deltas(self) -> None:
        if self.deltas_dir is None:
            return
        for version in list_deltas(self.deltas_dir, after=self.batcher.snapshot.delta_version):
            manifest = read_delta_manifest(self.deltas_dir, version)
            snapshot = self.batcher.snapshot
            base = manifest.get("base_model_version")
            if base is not None and int(base) != snapshot.model_version:
                self.deltas_skipped += 1  # written for another model: its rows are not read
                snapshot.delta_version = max(snapshot.delta_version, version)
                continue
            with _short_gil_slices():
                manifest, tables, dense = read_delta(self.deltas_dir, version, manifest)
            self.newest_delta_seen_at = time.time()
            self.batcher.run_control(
                lambda m=manifest, t=tables, d=dense, s=snapshot: s.apply_delta(m, t, d)
            ).wait()
            self.deltas_applied += 1
            if self.metrics is not None:
                self.metrics.deltas.inc()
                created = manifest.get("created")
                if created:
                    self.metrics.delta_lag.set(max(0.0, time.time() - float(created)))
