"""Run directories: one writer at a time, a restart that continues from the newest readable
checkpoint, and a loud refusal — never a silent fresh start — when earlier training is lost."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from streamrec.config import parse_config
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.store import CorruptModelError
from streamrec.train.online import OnlineTrainer
from streamrec.train.run_dir import RunDir, RunDirBusy

CONFIG = {
    "name": "run-dir-test",
    "schema": {
        "labels": [{"name": "label"}],
        "timestamp": "timestamp",
        "embeddings": [{"name": "user_id"}, {"name": "item_id"}],
    },
    "default_table": {"dim": 4, "optimizer": "adagrad", "lr": 0.05},
    "data": {"batch_size": 100},
    "model": {"name": "deepfm", "params": {"hidden": [16]}},
    "online": {"deterministic": True, "sync_every_batches": 2, "checkpoint_every_batches": 3},
}


def _stream(path: Path, n: int) -> Path:
    log = LocalLog(path)
    for i in range(n):
        label = int(i % 3 == 0)
        log.append({"user_id": i % 37, "item_id": i % 101, "label": label, "timestamp": i})
    log.close()
    return path


def _online(tmp_path: Path, n: int = 1000) -> dict:
    source = LocalLogSource(_stream(tmp_path / "log", n))
    trainer = OnlineTrainer(parse_config(CONFIG), source, tmp_path / "run", progress=False)
    return trainer.run(stop_when_idle=0.3)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from streamrec.train.run_dir import RunDir; "
         "held = RunDir(sys.argv[1]).open(); print('locked', flush=True); time.sleep(60)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=f"in use by another trainer \\(pid {holder.pid}\\)"):
            RunDir(tmp_path / "run").open()
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(CONFIG))
        second = subprocess.run(
            [sys.executable, "-m", "streamrec", "online", str(cfg), "--source",
             str(_stream(tmp_path / "log", 10)), "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120,
        )
        assert second.returncode == 2
        assert f"pid {holder.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        holder.kill()
        holder.wait()
    RunDir(tmp_path / "run").open().release()  # a killed holder's lock goes with it


def test_a_restart_resumes_from_the_newest_readable_checkpoint(tmp_path):
    first = _online(tmp_path)
    versions = sorted((tmp_path / "run" / "checkpoint").iterdir())
    assert [v.name.isdigit() for v in versions] == [True, True]  # the newest two are kept
    (versions[-1] / "dense.safetensors").write_bytes(b"bit rot")
    resumed = OnlineTrainer(
        parse_config(CONFIG), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    )
    previous = json.loads((versions[0] / "manifest.json").read_text())["online"]
    assert resumed.events_trained == previous["events_trained"] < first["events_trained"]
    assert resumed.run(stop_when_idle=0.3)["events_trained"] == first["events_trained"]


def test_deltas_without_the_checkpoint_they_follow_are_refused_loudly(tmp_path):
    """The failure seen: the checkpoint gone, the restart trained from scratch and exit 0."""
    _online(tmp_path)
    shutil.rmtree(tmp_path / "run" / "checkpoint")
    with pytest.raises(CorruptModelError, match="holds no checkpoint"):
        OnlineTrainer(
            parse_config(CONFIG), LocalLogSource(tmp_path / "log"), tmp_path / "run",
            progress=False,
        )
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    cli = subprocess.run(
        [sys.executable, "-m", "streamrec", "online", str(cfg), "--source", str(tmp_path / "log"),
         "--out", str(tmp_path / "run"), "--stop-when-idle", "0.3"],
        capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 2 and "holds no checkpoint" in cli.stderr


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    """Nothing was committed to the stream before the first checkpoint, so starting over from
    offset 0 loses nothing; the deltas it wrote name no checkpoint."""
    source = LocalLogSource(_stream(tmp_path / "log", 1000))
    trainer = OnlineTrainer(parse_config(CONFIG), source, tmp_path / "run", progress=False)
    for _ in range(2):  # one delta, no checkpoint
        trainer.step(source.poll(100))
    trainer.close()
    assert (tmp_path / "run" / "deltas").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()
    status = OnlineTrainer(
        parse_config(CONFIG), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    ).run(stop_when_idle=0.3)
    assert status["events_trained"] == 1000


def test_start_up_removes_what_killed_writers_left(tmp_path):
    _online(tmp_path, 300)
    run = tmp_path / "run"
    leftovers = [run / ".status.json.tmp-1-2", run / "checkpoint" / ".000000000009.tmp-3-4",
                 run / "deltas" / ".000000000042.tmp-5-6"]
    for p in leftovers:
        p.mkdir(parents=True) if "status" not in p.name else p.write_text("x")
    (run / ".best.old-7-8").mkdir()  # killed between the two renames that replace RUN/best
    (run / ".best.old-7-8" / "manifest.json").write_text("{}")
    before = time.time()
    RunDir(run).open().release()
    assert not any(p.exists() for p in leftovers)
    assert (run / "best" / "manifest.json").exists()  # put back, not lost
    assert os.path.getmtime(run / ".lock") >= before - 1


def test_every_nth_delta_is_a_full_snapshot(tmp_path):
    raw = {**CONFIG, "online": {**CONFIG["online"], "snapshot_every_deltas": 2}}
    log = LocalLog(tmp_path / "log")
    for i in range(1000):  # a new user every 50 events: a delta touches 4 of them
        log.append({"user_id": i // 50, "item_id": i % 7, "label": i % 2, "timestamp": i})
    log.close()
    OnlineTrainer(
        parse_config(raw), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    ).run(0.3)
    deltas = sorted((tmp_path / "run" / "deltas").iterdir())
    manifests = [json.loads((d / "manifest.json").read_text()) for d in deltas]
    assert [m["full"] for m in manifests[:4]] == [False, True, False, True]
    users = [m["tables"]["user_id"]["rows"] for m in manifests[:4]]
    assert users == [4, 8, 4, 16]  # incremental: the touched; snapshot: every row so far
    assert manifests[1]["dense"] and manifests[3]["dense"]
