"""Online training from a real local stream: bad messages dead-lettered, and kill -9 at random
moments followed by restarts trains every event exactly once (deterministic mode: the final
weights equal an uninterrupted run's)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from streamrec.config import parse_config
from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.models.persistence import load_model
from streamrec.store.delta import list_deltas, read_delta
from streamrec.train.online import OnlineTrainer

CONFIG = {
    "name": "online-test",
    "schema": {
        "labels": [{"name": "label"}],
        "timestamp": "timestamp",
        "embeddings": [
            {"name": "user_id"},
            {"name": "item_id"},
            {"name": "genres", "pooling": "mean"},
        ],
    },
    "default_table": {"dim": 8, "optimizer": "adagrad", "lr": 0.05},
    "data": {"batch_size": 200},
    "model": {"name": "deepfm", "params": {"hidden": [32]}},
    "train": {"seed": 0},
    "online": {"deterministic": True, "sync_every_batches": 3, "checkpoint_every_batches": 7},
}


def _log(path: Path, ml_small_dir: Path, n: int) -> None:
    table = load_ml_latest_small(ml_small_dir).slice(0, n)
    log = LocalLog(path, segment_messages=5000)
    for record in table.to_pylist():
        log.append(record)
    log.close()


def test_bad_messages_are_dead_lettered_and_training_goes_on(tmp_path, ml_small_dir):
    _log(tmp_path / "log", ml_small_dir, 1000)
    log = LocalLog(tmp_path / "log")
    log.append_raw(b"{not json")
    log.append({"user_id": 1, "item_id": 2, "timestamp": 5})  # no label
    log.append({"user_id": "one", "item_id": 2, "label": 1, "timestamp": 5, "genres": []})
    log.append_raw(b"[1, 2]")
    log.close()
    trainer = OnlineTrainer(
        parse_config(CONFIG), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    )
    status = trainer.run(stop_when_idle=0.5)
    assert status["events_consumed"] == 1004
    assert status["events_trained"] == 1000 and status["dead_lettered"] == 4
    reasons = [
        json.loads(x)["reason"]
        for x in (tmp_path / "run" / "dead_letter.jsonl").read_text().splitlines()
    ]
    assert reasons[0].startswith("not JSON") and "missing label" in reasons[1]
    assert "got `str` - at `$.user_id`" in reasons[2]
    assert "Expected `object`, got `array`" in reasons[3]
    saved = json.loads((tmp_path / "run" / "status.json").read_text())
    assert saved["events_trained"] == 1000 and saved["last_delta_version"] >= 1
    assert saved["windowed"]["label"]["count"] == 1000
    from streamrec.serving.snapshot import Snapshot

    served = Snapshot.load(tmp_path / "run")  # an online run directory serves as it is
    assert served.delta_version == saved["last_delta_version"]  # its deltas are already in


def _state(run: Path) -> dict:
    """Every table's tensors and the dense weights of a run's newest checkpoint."""
    model = load_model(run / "checkpoint").model
    state = {f"dense.{k}": v for k, v in model.state_dict().items()}
    for name, table in model.dynamic_tables().items():
        for key in ("weights", "optimizer_state", "fid", "count", "last_seen", "deleted_fids"):
            state[f"{name}.{key}"] = table.state_dict()[key]
    return state


def _wait_for_lock(proc: subprocess.Popen, run: Path) -> None:
    """Until the trainer holds the run directory (its PID in RUN/.lock): it has started."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if (run / ".lock").read_text().strip() == str(proc.pid):
                return
        except OSError:
            pass
        time.sleep(0.005)


def _kill_when_writing(
    proc: subprocess.Popen, run: Path, deadline: float, delay: float
) -> bool:
    """SIGKILL `proc` `delay` seconds after a checkpoint or delta write is seen in progress (a
    temporary folder exists), or at `deadline`; → whether it was still running."""
    seen = False
    while time.monotonic() < deadline and proc.poll() is None:
        for folder in (run, run / "checkpoint", run / "deltas"):
            try:
                if not seen and any(".tmp-" in name for name in os.listdir(folder)):
                    seen, deadline = True, time.monotonic() + delay  # inside a write: soon
            except OSError:
                pass
        time.sleep(0.002)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_chaos_kill_9_inside_writes_and_restart_equals_an_uninterrupted_run(
    tmp_path, ml_small_dir
):
    """≥ 20 SIGKILLs of `streamrec online`, many inside checkpoint / delta writes (file
    operations slowed), each followed by a restart: the final tables, dense weights, event
    counts and dead-letter file equal an uninterrupted run's, byte for byte — with two records
    that would have moved the event-time clock (dated 2100; in milliseconds) dead-lettered
    once each, and a 90-day TTL expiring rows by event time: the deletions a delta must still
    report (`deleted_fids`) equal too. (They differed once: a resumed run restarted the delta
    cadence and forgot which changes the last delta had sent — fixed, with
    `test_a_resumed_run_still_sends_every_change_made_before_its_checkpoint`.)"""
    records = load_ml_latest_small(ml_small_dir).slice(0, 12_000).to_pylist()
    log = LocalLog(tmp_path / "log", segment_messages=5000)
    for i, record in enumerate(records):
        if i % 2000 == 1000:  # poison all along the log: each is dead-lettered exactly once
            log.append_raw(b"{broken json %d" % i)
        if i in (3500, 7500):  # a clock jump: dead-lettered, never the expiry clock
            stamp = 4_102_444_800 if i == 3500 else record["timestamp"] * 1000
            log.append({**record, "timestamp": stamp})
        log.append(record)
    log.close()
    total = len(records) + 8
    # a 90-day TTL: rows expire by the event clock, and every deletion must reach a delta
    config = {**CONFIG, "default_table": {**CONFIG["default_table"], "ttl_seconds": 7_776_000},
              "train": {**CONFIG["train"], "evict_every_steps": 5}}
    cfg_path = tmp_path / "online.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    uninterrupted = OnlineTrainer(
        parse_config(config), LocalLogSource(tmp_path / "log", "ref"), tmp_path / "ref",
        progress=False,
    )
    reference = uninterrupted.run(stop_when_idle=0.5)
    assert reference["events_consumed"] == total and reference["dead_lettered"] == 8
    assert uninterrupted.trainer.rows_evicted > 0  # the TTL did expire rows

    run = tmp_path / "run"
    cmd = [sys.executable, str(Path(__file__).parent / "slow_io.py"), "online", str(cfg_path),
           "--source", str(tmp_path / "log"), "--out", str(run), "--group", "killed",
           "--stop-when-idle", "1"]
    rng = np.random.default_rng(7)
    kills = aimed = 0
    while kills < 20:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_lock(proc, run)
        time.sleep(0.2)  # past the start-up's removal of leftovers
        started = time.monotonic()
        if kills % 2 == 0:  # at a random moment
            time.sleep(float(rng.uniform(0.5, 4.5)))
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        else:  # inside a write
            killed = _kill_when_writing(proc, run, started + 6, float(rng.uniform(0, 0.4)))
            aimed += killed
        if not killed:  # it finished: the stream is done, nothing left to interrupt
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        kills += 1
    assert kills >= 20 and aimed >= 8, (kills, aimed)
    final = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    status = json.loads(final.stdout)
    assert status["events_consumed"] == total and status["dead_lettered"] == 8
    assert status["events_trained"] == reference["events_trained"] == total - 8
    dead = (run / "dead_letter.jsonl").read_text().splitlines()
    assert dead == (tmp_path / "ref" / "dead_letter.jsonl").read_text().splitlines()
    ours, ref = _state(run), _state(tmp_path / "ref")
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
    leftovers = [p for p in run.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_a_run_that_sees_no_good_record_ends_cleanly_without_a_checkpoint(tmp_path):
    """Nothing but junk (or nothing at all) before the stop: the input kinds are still unknown,
    so there is no model to save — the run ends with rc 0 and says why, instead of failing in
    its final checkpoint; a restart re-reads the junk and dead-letters it identically."""
    log = LocalLog(tmp_path / "log")
    log.append_raw(b"{broken")
    log.close()
    lines: list[str] = []
    for _ in range(2):
        status = OnlineTrainer(
            parse_config(CONFIG), LocalLogSource(tmp_path / "log"), tmp_path / "run",
            progress=False, log=lines.append,
        ).run(stop_when_idle=0.3)
        assert status["events_consumed"] == 1 and status["dead_lettered"] == 1
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert any("no checkpoint yet" in line and "user_id" in line for line in lines)
    assert len((tmp_path / "run" / "dead_letter.jsonl").read_text().splitlines()) == 1


def test_a_resumed_run_still_sends_every_change_made_before_its_checkpoint(tmp_path):
    """A checkpoint between two deltas, then a crash: the rows changed between the last delta
    and the checkpoint must reach the next delta. The exporter's "changed since" versions were
    not checkpointed, so a resumed run sent only what changed after the checkpoint — rows that
    changed once just before it (and their deletions) never reached the server."""
    rng = np.random.default_rng(0)
    log = LocalLog(tmp_path / "log")
    for i in range(2000):  # every id its own row: most rows change in one batch only
        log.append({"user_id": int(i), "item_id": int(rng.integers(0, 10**9)),
                    "genres": ["Drama"], "label": int(rng.random() < 0.3),
                    "timestamp": 1_000_000 + i})
    log.close()
    config = {**CONFIG, "online": {"deterministic": True, "sync_every_batches": 3,
                                   "checkpoint_every_batches": 4}}
    cfg = parse_config(config)
    first = OnlineTrainer(cfg, LocalLogSource(tmp_path / "log"), tmp_path / "run",
                          progress=False)
    steps = 0
    while steps < 5:  # a delta after batch 3, a checkpoint after batch 4, then the crash
        messages = first.source.poll(200, timeout=0.1)
        if messages:
            first.step(messages)
            steps += 1
    first.close()
    resumed = OnlineTrainer(parse_config(config), LocalLogSource(tmp_path / "log"),
                            tmp_path / "run", progress=False)
    resumed.run(stop_when_idle=0.5)
    sent: dict[str, set[int]] = {}
    for version in list_deltas(tmp_path / "run" / "deltas"):
        tables = read_delta(tmp_path / "run" / "deltas", version).tables
        for name, delta in tables.items():
            sent.setdefault(name, set()).update(delta.fids.tolist())
    final = load_model(tmp_path / "run" / "checkpoint").model
    for name, table in final.dynamic_tables().items():
        live = set(table.state_dict()["fid"][table.state_dict()["count"] > 0].tolist())
        assert live - sent.get(name, set()) == set(), name
