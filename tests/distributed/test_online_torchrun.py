"""`torchrun -m streamrec online` on 2 ranks: every event trained once (bad ones
dead-lettered), one delta stream a single-process server applies, a merged model that matches
a single-process run of the same stream, and a resumed second run that picks up only new events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream import LocalLog
from streamrec.embedding.sharded import owner_of
from streamrec.models.persistence import load_model
from streamrec.serving.snapshot import Snapshot
from streamrec.store.delta import list_deltas, read_delta
from tests.stream.test_online import CONFIG

from .faults import kill_a_rank_after_checkpoint

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _append(log_dir: Path, table: pa.Table, bad: bool = False) -> None:
    log = LocalLog(log_dir, segment_messages=5000)
    for record in table.to_pylist():
        log.append(record)
    if bad:
        log.append_raw(b"{not json")
    log.close()


def _online(*args: str, ranks: int) -> subprocess.CompletedProcess:
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    return subprocess.run([*launcher, "-m", "streamrec", "online", *args, "--stop-when-idle", "1",
                           "--json"], capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_two_rank_online_training_matches_one_process_and_serves(tmp_path, ml_small_dir):
    data = load_ml_latest_small(ml_small_dir)
    first, later = data.slice(0, 2000), data.slice(2000, 600)
    _append(tmp_path / "log", first, bad=True)
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(CONFIG))
    common = [str(tmp_path / "online.yaml"), "--source", str(tmp_path / "log")]

    one = _online(*common, "--out", str(tmp_path / "one"), "--group", "one", ranks=1)
    two = _online(*common, "--out", str(tmp_path / "two"), "--group", "two", ranks=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    s1 = json.loads(one.stdout)
    s2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert s2["events_consumed"] == 2001 and s2["events_trained"] == 2000
    assert s2["dead_lettered"] == 1 and s2["lag"] == 0
    assert s2["windowed"]["label"]["count"] == 2000  # every rank's predictions were gathered
    assert abs(s2["windowed"]["label"]["auc"] - s1["windowed"]["label"]["auc"]) < 0.01
    assert s2["last_delta_version"] == s1["last_delta_version"]

    # One delta stream, holding rows from both ranks' shards.
    run = tmp_path / "two"
    versions = list_deltas(run / "deltas")
    assert versions == list(range(1, s2["last_delta_version"] + 1))
    tables = read_delta(run / "deltas", versions[0]).tables
    owners = set(owner_of(tables["item_id"].fids.numpy(), 2).tolist())
    assert owners == {0, 1}

    # The merged model predicts like the single-process one on the same rows.
    rows = pa.Table.from_pylist(first.slice(0, 300).to_pylist())
    merged = Snapshot.load(run / "model")
    single = Snapshot.load(tmp_path / "one" / "checkpoint")
    np.testing.assert_allclose(merged.predict(rows), single.predict(rows), atol=0.02)
    assert len(load_model(run / "model").model.dynamic_tables()["item_id"]) == len(
        load_model(tmp_path / "one" / "checkpoint").model.dynamic_tables()["item_id"])

    # New events, same OUT: the job resumes from its sharded checkpoint and trains only those.
    _append(tmp_path / "log", later)
    again = _online(*common, "--out", str(run), "--group", "two", ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    s3 = json.loads(again.stdout.strip().splitlines()[-1])
    assert s3["events_consumed"] == 2601 and s3["events_trained"] == 2600
    assert "resumed from checkpoint" in again.stderr


@pytest.mark.slow
def test_a_killed_rank_is_restarted_and_online_training_resumes_exactly(tmp_path, ml_small_dir):
    """SIGKILL one rank mid-stream under `torchrun --max-restarts 1`: the workers restart from
    the newest sharded checkpoint, rank 0 seeks the stream back to its offset, and the final
    model equals an uninterrupted 2-rank run's (deterministic mode: every event trained once)."""
    _append(tmp_path / "log", load_ml_latest_small(ml_small_dir).slice(0, 8000))
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(CONFIG))
    args = ["-m", "streamrec", "online", str(tmp_path / "online.yaml"), "--source",
            str(tmp_path / "log"), "--stop-when-idle", "1", "--json"]
    whole = subprocess.run([*TORCHRUN, *args, "--out", str(tmp_path / "whole"), "--group", "w"],
                           capture_output=True, text=True, timeout=600, cwd=REPO)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run = tmp_path / "killed"
    job = subprocess.Popen([*TORCHRUN, "--max-restarts", "1", *args, "--out", str(run),
                            "--group", "k"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = kill_a_rank_after_checkpoint(job, run, min_step=14)
    assert job.returncode == 0, stderr[-3000:]
    assert "resumed from checkpoint" in stderr
    status = json.loads(stdout.strip().splitlines()[-1])
    assert status["events_trained"] == 8000 and status["lag"] == 0
    expected = load_model(tmp_path / "whole" / "model").model.dynamic_tables()
    got = load_model(run / "model").model.dynamic_tables()
    for name, table in expected.items():
        a, b = table.state_dict(), got[name].state_dict()
        order_a, order_b = np.argsort(a["fid"].numpy()), np.argsort(b["fid"].numpy())
        np.testing.assert_array_equal(a["fid"].numpy()[order_a], b["fid"].numpy()[order_b])
        np.testing.assert_array_equal(a["weights"].numpy()[order_a], b["weights"].numpy()[order_b])
