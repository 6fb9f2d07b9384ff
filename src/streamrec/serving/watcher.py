"""Freshness: a thread that picks up new deltas and new model versions while the server runs.

Every `poll_seconds` it
* applies, in version order, the deltas newer than the one applied — read and checksummed here,
  applied in place by the inference worker between batches (no model copy);
* notices a new full model in the model directory (its manifest's model_version changed),
  loads it beside the old one, warms it up on recently served requests, then has the worker
  swap it in atomically; the old model is freed once the swap is done.
Deltas written for another base model are skipped (and counted), never applied to the wrong one.

A delta that fails its checksums or does not parse is quarantined: reported once in the log,
listed by `/v1/model`, counted in `/metrics`, and skipped — the deltas after it are still
applied in order, and the server says it is degraded (the rows only that delta changed are
stale) until something covers it: the next full-snapshot delta (`online.snapshot_every_deltas`)
or a new full model (an online run's next checkpoint). A new model that fails to load is
reported the same way; the served one stays.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from streamrec.serving.batcher import use_compute_threads
from streamrec.serving.metrics import ServerMetrics
from streamrec.serving.snapshot import Snapshot
from streamrec.store import CorruptModelError, ModelDir, find_model_dir
from streamrec.store.delta import DeltaDir, list_deltas
from streamrec.store.manifest import DeltaManifest
from streamrec.store.model_dir import manifest_stamp

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
def short_gil_slices(interval: float = LOADING_SWITCH_INTERVAL_S) -> Iterator[None]:
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


def yield_to_requests() -> None:
    time.sleep(LOAD_PAUSE_S)


def lower_thread_priority(niceness: int) -> None:
    """Linux applies setpriority to a single thread when given its thread id."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except (AttributeError, OSError) as e:  # not Linux, or not permitted: run at normal priority
        log.info("could not lower the watcher thread's priority: %s", e)


class ServedModel(Protocol):
    """What a watcher keeps fresh: the ranker's `DynamicBatcher`, or a cascade stage such as
    the pre-ranker (`serving/prerank_stage.py`). `run_control(op)` runs `op` where it cannot
    overlap an inference with this model."""

    snapshot: Snapshot
    threads: int
    recent_tables: list[Any]  # recently scored rows (pyarrow tables), to warm a new model up

    def run_control(self, op: Callable[[], object]) -> Future: ...


class Watcher(threading.Thread):
    def __init__(
        self,
        batcher: ServedModel,
        model_path: Path,
        deltas_dir: Path | None,
        poll_seconds: float = 0.5,
        metrics: ServerMetrics | None = None,
        row_precision: str = "fp32",
    ) -> None:
        super().__init__(name="streamrec-watcher", daemon=True)
        self.batcher = batcher
        self.row_precision = row_precision  # a reloaded model's rows, as the first one's
        self.model_path = model_path  # as given: a run directory's newest model is found anew
        self.deltas_dir = deltas_dir
        self.poll = poll_seconds
        self.metrics = metrics
        self.newest_delta_seen_at: float | None = None
        self.delta_lag_s: float | None = None  # the last delta: created → applied, seconds
        # The last delta: its oldest event's consumption by the trainer → applied here, seconds
        self.event_to_served_s: float | None = None
        self.training_health: list[dict] = []  # the warnings the last delta's trainer reported
        self.deltas_applied = 0
        self.deltas_skipped = 0
        self.reloads = 0
        self.last_reload: dict[str, float] | None = None  # phases of the latest reload, seconds
        self.errors: list[str] = []
        # version → (reason, base model version): deltas skipped as unreadable
        self.quarantined: dict[int, tuple[str, int | None]] = {}
        self.failed_model: tuple[Path, int, str] | None = None  # a new model that did not load
        self._manifest_stamp: tuple[Path, int, int, int] | None = None  # of the version read
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        lower_thread_priority(WATCHER_NICENESS)
        use_compute_threads(self.batcher.threads)  # warm-up inference runs on this thread
        while not self._stop.wait(self.poll):
            try:
                self.check_model()
                self.check_deltas()
            except Exception as e:  # keep serving the current model; report the problem
                self.errors.append(str(e))
                del self.errors[:-10]
                log.warning("freshness check failed: %s", e)

    def degraded_reasons(self) -> list[str]:
        """Why the served model may be behind what training wrote; empty when it is not."""
        reasons = [
            f"delta {v} quarantined: {why}" for v, (why, _) in sorted(self.quarantined.items())
        ]
        if self.failed_model is not None:
            path, version, reason = self.failed_model
            reasons.append(f"model {version} at {path} did not load: {reason}")
        return reasons

    def check_model(self) -> None:
        try:
            directory = find_model_dir(self.model_path)
            stamp = manifest_stamp(directory)
            if stamp == self._manifest_stamp:
                return  # the same manifest file: the same model, nothing read or parsed
            opened = ModelDir.open(directory)  # read once: the reload below uses it too
            version = opened.manifest.model_version
            self._manifest_stamp = stamp
        except (CorruptModelError, OSError, ValueError, TypeError):
            return  # mid-replacement or removed: keep the current model
        if version == self.batcher.snapshot.model_version:
            return
        if self.failed_model is not None and self.failed_model[:2] == (directory, version):
            return  # reported already; wait for a newer one
        started = time.time()
        try:
            with short_gil_slices():
                fresh = Snapshot.load(opened, pause=yield_to_requests)
                fresh.encode_rows(self.row_precision)
        except Exception as e:  # a corrupt or half-removed model: keep serving the current one
            self.failed_model = (directory, version, str(e)[:500])
            log.error("model %s at %s did not load, still serving the current one: %s",
                      version, directory, e)
            return
        with short_gil_slices():
            loaded = time.time()
            for table in list(self.batcher.recent_tables):  # warm-up on recorded requests
                yield_to_requests()
                fresh.predict(table)
        warmed = time.time()

        retired = self.batcher.snapshot

        def swap() -> None:
            self.batcher.snapshot = fresh

        self.batcher.run_control(swap).result()
        self.failed_model = None
        self._forget_quarantine_covered_by(fresh)
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

    def _forget_quarantine_before(self, version: int) -> None:
        for skipped in [v for v in self.quarantined if v < version]:
            del self.quarantined[skipped]
        if self.metrics is not None:
            self.metrics.degraded.set(1 if self.degraded_reasons() else 0)

    def _forget_quarantine_covered_by(self, fresh: Snapshot) -> None:
        """A full model that already holds a quarantined delta's rows (an online checkpoint
        written after it), or that the delta was never meant for, heals that gap."""
        for version, (_, base) in list(self.quarantined.items()):
            if version <= fresh.delta_version or (base is not None and base != fresh.model_version):
                del self.quarantined[version]
        if self.metrics is not None:
            self.metrics.degraded.set(1 if self.degraded_reasons() else 0)

    def quarantine(self, version: int, reason: str, base: int | None) -> None:
        self.quarantined[version] = (reason[:500], base)
        log.error("delta %d quarantined (skipped; later deltas still applied): %s", version, reason)
        if self.metrics is not None:
            self.metrics.quarantined.inc()
            self.metrics.degraded.set(1)

    def check_deltas(self) -> None:
        if self.deltas_dir is None:
            return
        for version in list_deltas(self.deltas_dir, after=self.batcher.snapshot.delta_version):
            if version in self.quarantined:
                continue
            snapshot = self.batcher.snapshot
            base = None
            try:
                directory = DeltaDir.open(self.deltas_dir, version)
                manifest = directory.manifest
                base = manifest.base_model_version
                if base is not None and base != snapshot.model_version:
                    self.deltas_skipped += 1  # written for another model: its rows are not read
                    snapshot.delta_version = max(snapshot.delta_version, version)
                    continue
                with short_gil_slices():
                    delta = directory.read()
                self.newest_delta_seen_at = time.time()
                self.batcher.run_control(lambda d=delta, s=snapshot: s.apply_delta(d)).result()
            except (CorruptModelError, KeyError, ValueError, TypeError, RuntimeError) as e:
                # RuntimeError: rows or dense weights that do not fit the model (torch's error)
                self.quarantine(version, f"{type(e).__name__}: {e}", base)
                snapshot.delta_version = max(snapshot.delta_version, version)
                continue
            self.deltas_applied += 1
            if manifest.full:  # a full snapshot heals every gap before it
                self._forget_quarantine_before(version)
            self._note_freshness(manifest)

    def _note_freshness(self, manifest: DeltaManifest) -> None:
        """What an applied delta says about staleness: created → applied (delta lag), its
        oldest event consumed → applied (event → served), the trainer's health warnings."""
        now = time.time()
        self.delta_lag_s = _seconds_since(now, manifest.created)
        consumed = manifest.consumed_at
        self.event_to_served_s = _seconds_since(now, consumed[0] if consumed else None)
        self.training_health = list(manifest.health)
        if self.metrics is not None:
            self.metrics.deltas.inc()
            if self.delta_lag_s is not None:
                self.metrics.delta_lag.set(self.delta_lag_s)
            if self.event_to_served_s is not None:
                self.metrics.event_to_served.set(self.event_to_served_s)


def _seconds_since(now: float, then: object) -> float | None:
    """now − then for a manifest's Unix time; None when absent or not a number (a delta from
    an older trainer, or a hand-edited one: staleness unknown, not an error)."""
    if isinstance(then, bool) or not isinstance(then, int | float):
        return None
    return max(0.0, now - float(then))
