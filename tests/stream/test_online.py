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
import yaml

from streamrec.config import parse_config
from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.models.persistence import load_model
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
    assert "'user_id' expects int" in reasons[2] and reasons[3] == "not a JSON object"
    saved = json.loads((tmp_path / "run" / "status.json").read_text())
    assert saved["events_trained"] == 1000 and saved["last_delta_version"] >= 1
    assert saved["windowed"]["label"]["count"] == 1000
    from streamrec.serving.snapshot import Snapshot

    served = Snapshot.load(tmp_path / "run")  # an online run directory serves as it is
    assert served.delta_version == saved["last_delta_version"]  # its deltas are already in


def _tables(run: Path) -> dict:
    model = load_model(run / "checkpoint").model
    return {name: t.state_dict() for name, t in model.dynamic_tables().items()}


@pytest.mark.slow
def test_kill_9_and_restart_trains_every_event_exactly_once(tmp_path, ml_small_dir):
    n = 12_000
    _log(tmp_path / "log", ml_small_dir, n)
    cfg_path = tmp_path / "online.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    reference = OnlineTrainer(
        parse_config(CONFIG),
        LocalLogSource(tmp_path / "log", "ref"),
        tmp_path / "ref",
        progress=False,
    ).run(stop_when_idle=0.5)
    assert reference["events_trained"] == n

    cmd = [
        sys.executable,
        "-m",
        "streamrec",
        "online",
        str(cfg_path),
        "--source",
        str(tmp_path / "log"),
        "--out",
        str(tmp_path / "run"),
        "--group",
        "killed",
        "--stop-when-idle",
        "1",
    ]
    rng = np.random.default_rng(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        time.sleep(float(rng.uniform(2.0, 5.0)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    final = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    status = json.loads(final.stdout)
    assert kills >= 1
    assert status["events_trained"] == n and status["dead_lettered"] == 0
    ours, ref = _tables(tmp_path / "run"), _tables(tmp_path / "ref")
    for name in ref:
        for key in ("weights", "optimizer_state", "fid", "count"):
            assert np.array_equal(ours[name][key].numpy(), ref[name][key].numpy()), (name, key)
