"""`torchrun -m streamrec train` on this machine: 2 ranks reach the single-process AUC, the
merged model evaluates the same in one process, shards reshard to any world size, and a rank
that dies ends the job instead of hanging it."""

from __future__ import annotations

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

from streamrec.embedding import DynamicTable
from streamrec.embedding.reshard import reshard
from streamrec.embedding.sharded import owner_of

from .faults import kill_a_rank_after_checkpoint

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _streamrec(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_the_merged_model_evaluates_alike(tmp_path, data_dir):
    """The two ranks keep their shards in tiered tables (a 64 KiB DRAM budget per table, the
    rest on disk, one folder per rank): sharding and tiering compose."""
    single = _streamrec("train", "examples/criteo_dcnv2.yaml", "--out", str(tmp_path / "one"),
                        "--json", "-q")
    assert single.returncode == 0, single.stderr
    tiers = tmp_path / "tiers"
    storage = f"default_table.storage={{memory_budget: 64KiB, path: {tiers}}}"
    two = subprocess.run(TORCHRUN + ["--nproc_per_node", "2", "-m", "streamrec", "train",
                                     "examples/criteo_dcnv2.yaml", "--out", str(tmp_path / "two"),
                                     "--json", "-q", "--set", storage],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    auc_one = json.loads(single.stdout)["metrics"]["label"]["auc"]
    auc_two = json.loads(two.stdout.strip().splitlines()[-1])["metrics"]["label"]["auc"]
    assert abs(auc_one - auc_two) < 0.01
    assert sorted(p.name for p in (tmp_path / "two" / "shards").iterdir()) == [
        "rank-000", "rank-001"]
    assert sorted(p.name for p in tiers.iterdir()) == ["rank-000", "rank-001"]
    assert list((tmp_path / "two" / "shards" / "rank-001" / "tables").glob("*.disk/*.sst"))
    evaluated = _streamrec("eval", str(tmp_path / "two"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["metrics"]["label"]["auc"] == pytest.approx(auc_two)


def test_shards_reshard_to_any_world_size():
    config = dict(dim=3, optimizer="rowwise_adagrad", lr=0.1)
    ids = torch.arange(500, dtype=torch.int64) * 31
    shards = []
    for rank in range(2):  # two shards, each with the ids it owns
        t = DynamicTable(**config)
        mine = ids[torch.from_numpy(owner_of(ids.numpy(), 2) == rank)]
        t.lookup(mine, now=5)
        t.apply_gradients(mine, torch.randn(len(mine), 3))
        shards.append(t)
    expected = {}
    for t in shards:
        live = t.live_rows()
        expected.update(zip(t.state_dict()["fid"].numpy()[live].tolist(), t.gather_rows(live),
                            strict=True))
    for world in (1, 3, 4):
        states = reshard(shards[0].settings, [t.state_dict() for t in shards], world)
        seen = 0
        for rank, state in enumerate(states):
            t = DynamicTable.from_config(shards[0].settings)
            t.load_state_dict(state)
            live = t.live_rows()
            fids = t.state_dict()["fid"].numpy()[live]
            assert (owner_of(fids, world) == rank).all()
            for fid, row in zip(fids.tolist(), t.gather_rows(live), strict=True):
                np.testing.assert_array_equal(row, expected[fid])
            seen += len(fids)
        assert seen == len(expected) == 500


@pytest.mark.slow
def test_a_dead_rank_ends_the_job_instead_of_hanging(tmp_path, data_dir):
    cfg = (REPO / "examples" / "criteo_dcnv2.yaml").read_text().replace(
        "train: {epochs: 1,", "train: {epochs: 50,").replace("../../shared/data", str(data_dir))
    (tmp_path / "long.yaml").write_text(cfg)
    env = {**os.environ, "STREAMREC_DIST_TIMEOUT": "20"}
    job = subprocess.Popen(TORCHRUN + ["--nproc_per_node", "2", "-m", "streamrec", "train",
                                       str(tmp_path / "long.yaml"), "--out", str(tmp_path / "run"),
                                       "-q"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(15)
    children = subprocess.run(["pgrep", "-f", "-P", str(job.pid), "streamrec"],
                              capture_output=True, text=True).stdout.split()
    assert children, "no worker processes found"
    os.kill(int(children[-1]), signal.SIGKILL)
    started = time.time()
    try:
        code = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert code != 0 and time.time() - started < 120


@pytest.mark.slow
def test_max_restarts_resumes_from_the_last_sharded_checkpoint_exactly(tmp_path, data_dir):
    """Kill a rank after a checkpoint: torchrun restarts the workers, they continue from the
    newest complete step and finish with the very metrics of an uninterrupted run. A checkpoint
    of 2 ranks then resumes in one process (resharded) to train further."""
    cfg = (REPO / "examples" / "criteo_dcnv2.yaml").read_text().replace(
        "train: {epochs: 1,", "train: {epochs: 2, checkpoint_every_steps: 8,").replace(
        "../../shared/data", str(data_dir))
    (tmp_path / "ckpt.yaml").write_text(cfg)
    args = ["-m", "streamrec", "train", str(tmp_path / "ckpt.yaml"), "--json", "-q"]
    env = {**os.environ, "STREAMREC_DIST_TIMEOUT": "20"}
    whole = subprocess.run(TORCHRUN + ["--nproc_per_node", "2", *args, "--out",
                                       str(tmp_path / "whole")],
                           capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = json.loads(whole.stdout.strip().splitlines()[-1])

    run = tmp_path / "killed"
    job = subprocess.Popen(TORCHRUN + ["--nproc_per_node", "2", "--max-restarts", "1", *args,
                                       "--out", str(run)],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    stdout, stderr = kill_a_rank_after_checkpoint(job, run, min_step=16)
    assert job.returncode == 0, stderr[-3000:]
    resumed = json.loads(stdout.strip().splitlines()[-1])
    assert resumed["resumed_from_step"] >= 16
    assert resumed["steps"] == expected["steps"]
    assert resumed["metrics"]["label"]["auc"] == expected["metrics"]["label"]["auc"]
    assert resumed["metrics"]["label"]["logloss"] == expected["metrics"]["label"]["logloss"]

    one = _streamrec("train", str(tmp_path / "ckpt.yaml"), "--out", str(run), "--resume",
                     "--epochs", "3", "--json", "-q")
    assert one.returncode == 0, one.stderr[-3000:]
    more = json.loads(one.stdout)
    assert more["resumed_from_step"] == expected["steps"]
    assert more["steps"] > expected["steps"] and more["metrics"]["label"]["auc"] > 0.6


@pytest.mark.slow
def test_a_health_stop_ends_every_rank_together_with_a_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    stopped = subprocess.run(
        TORCHRUN + ["--nproc_per_node", "2", "-m", "streamrec", "train",
                    "examples/criteo_dcnv2.yaml", "--out", str(out), "-q",
                    "--set", "train.health=stop",
                    "--set", "train.health_rules.exploding_grad_norm=0.000000001"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert stopped.returncode != 0  # torchrun reports the ranks' exit code 3 as a failure
    assert stopped.stderr.count("stopped by the health rule exploding_gradient") == 2
    status = json.loads((out / "status.json").read_text())  # rank 0 writes it
    assert status["health"][0]["rule"] == "exploding_gradient"
    assert status["step"] == 1  # the step it fired at (the ranks stop at the next check step)
    assert any((out / "checkpoint").iterdir())  # the sharded checkpoint --resume continues from
