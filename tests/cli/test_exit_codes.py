"""The exit-code contract of docs/operations.md, one row a test where the other tests do not
already hold it: a full disk mid-run, and a load generator with no server to load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_signals import online_command


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def small_disk(tmp_path):
    """A 120 kB tmpfs (mount needs root: CI runs as root, and requires it)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("STREAMREC_REQUIRE_SERVICES") == "1":
            pytest.fail(f"a small tmpfs is required in CI: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_mid_run_is_one_line_exit_2_and_the_run_continues_once_freed(
    tmp_path, small_disk, ml_small_dir
):
    n = 3_000
    cmd = online_command(tmp_path, ml_small_dir, n, small_disk / "run")
    full = _cli(*cmd)
    assert full.returncode == 2, full.stderr[-1000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert "Traceback" not in full.stderr
    resized = subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)])
    assert resized.returncode == 0
    done = _cli(*cmd)
    assert done.returncode == 0, done.stderr[-1000:]
    status = json.loads(done.stdout)
    assert status["events_consumed"] == n and status["events_trained"] == n


def test_bench_serve_with_no_server_is_one_line_exit_4():
    done = _cli("bench", "serve", "--url", "http://127.0.0.1:9", "--duration", "1")
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach http://127.0.0.1:9" in lines[0]


def test_the_exit_code_table_lists_every_code_the_cli_uses():
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for code in ("0 on success", "2 with a one-line", "1 when the server", "3 when a training",
                 "4 when Kafka", "130 on Ctrl-C", "143"):
        assert code in page, code
