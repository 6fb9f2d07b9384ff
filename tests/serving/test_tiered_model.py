"""A model whose tables keep most rows on disk (`storage:`), end to end through the CLI and
HTTP: it trains to exactly the model an in-memory run trains, survives a kill -9 between
checkpoints, and serves the same scores from a private copy of its disk tier with the DRAM hit
rate on /metrics."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from streamrec.models.persistence import load_model

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _config(tmp: Path) -> Path:
    cfg = yaml.safe_load((REPO / "examples" / "ml100k_deepfm.yaml").read_text())
    # 64 KiB per table: ~390 rows at dim 16 + Adagrad — most of the 1,682 items live on disk.
    cfg["default_table"]["storage"] = {"memory_budget": "64KiB", "path": str(tmp / "tiers")}
    cfg["train"]["epochs"] = 1
    cfg["train"]["checkpoint_every_steps"] = 40
    path = tmp / "tiered.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamrec", "train", str(config), "--out", str(out), "-q",
         "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _metrics(run: Path) -> dict:
    return json.loads((run / "model" / "manifest.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def tiered_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tiered")
    out = tmp / "run"
    proc = _train(_config(tmp), out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return out


def test_a_tiered_model_trains_exactly_like_an_in_memory_one(tiered_run, trained_run):
    assert _metrics(tiered_run) == _metrics(trained_run)
    loaded = load_model(tiered_run)
    items = loaded.model.dynamic_tables()["item_id"]
    assert items.cold_rows > 1000 and items.hot_rows <= items.budget_rows
    manifest = loaded.manifest
    assert manifest.tables["item_id"].disk_tier.endswith(".disk")
    assert any(name.endswith(".sst") for name in manifest.file_sizes)


def _flip_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a data block: the footer and index sit at the end
    with open(f, "r+b") as fh:  # in place: every hard link sees it, as with a bad disk sector
        fh.write(data)


def _own_ssts(newest: Path, older: Path) -> list[Path]:
    """The SSTs of `newest` that are not hard links of one in `older`."""
    shared = {f.stat().st_ino for f in older.rglob("*.sst")}
    return [f for f in sorted(newest.rglob("*.sst")) if f.stat().st_ino not in shared]


def test_a_kill_then_a_corrupt_sst_resumes_from_the_checkpoint_before(tmp_path, trained_run):
    """Killed with two checkpoints written; then a byte of the newest one's disk tier goes bad.
    The resume verifies the SSTs at load, skips that checkpoint, continues from the one before
    it, and still trains exactly the uninterrupted model (it used to crash mid-training)."""
    config = _config(tmp_path)
    out = tmp_path / "run"
    proc = _train(config, out)
    deadline = time.time() + 300
    while len(list((out / "checkpoint").glob("[0-9]*"))) < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere between two checkpoints, or inside one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    older, newest = sorted((out / "checkpoint").glob("[0-9]*"))[-2:]
    own = _own_ssts(newest, older)
    assert own, "each checkpoint flushes the memtable into an SST of its own"
    _flip_byte(own[0])
    resumed = _train(config, out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()
    assert "checksum mismatch" in err.decode() and newest.name in err.decode()
    assert _metrics(out) == _metrics(trained_run)


def test_a_server_refuses_a_model_whose_disk_tier_is_corrupt(tiered_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiered_run / "model", copy / "model")  # copies: the fixture stays intact
    sst = sorted((copy / "model").rglob("*.sst"))[0]
    _flip_byte(sst)
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "serve", str(copy), "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert sst.name in done.stderr and "checksum mismatch" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_server_scores_from_a_private_copy_and_reports_the_hit_rate(
    tiered_run, trained_run, start_server, tmp_path
):
    trainer_tiers = sorted(p.name for p in (tiered_run.parent / "tiers").rglob("*"))
    tiered = start_server(tiered_run)
    # The in-memory model alone: other tests write deltas beside the shared trained run.
    shutil.copytree(trained_run / "model", tmp_path / "plain" / "model")
    plain = start_server(tmp_path / "plain")
    body = {
        "context": {"user_id": 7, "age": 30, "gender": "M", "occupation": "student",
                    "zip_code": "55414"},
        "candidates": [{"item_id": i, "genres": ["Drama"]} for i in range(1, 300)],
    }
    got = tiered.post("/v1/rank", json=body)
    want = plain.post("/v1/rank", json=body)
    assert got.status_code == 200, got.text
    assert got.json()["scores"] == want.json()["scores"]
    metrics = tiered.get("/metrics").text
    assert 'streamrec_table_rows{table="item_id",tier="disk"}' in metrics
    resolved = _sample(metrics, 'streamrec_table_ids_resolved_total{table="item_id"}')
    misses = _sample(metrics, 'streamrec_table_dram_misses_total{table="item_id"}')
    assert resolved >= 299 and 0 < misses <= resolved
    info = tiered.get("/v1/model").json()
    assert info["tables"]["item_id"]["dram_rows"] <= 400
    # The served copy lives beside the model, not in the trainer's folder …
    assert sorted(p.name for p in (tiered_run.parent / "tiers").rglob("*")) == trainer_tiers
    private = list(tiered_run.glob(".tiers-*"))
    assert private, "the server's working copy of the disk tier"
    tiered.stop()
    assert not list(tiered_run.glob(".tiers-*/*/*.sst"))  # … and goes when the server stops


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")
