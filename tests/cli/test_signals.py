"""Signals end commands with their documented exit codes: Ctrl-C at any moment of start-up is
130 without a traceback (it was a KeyboardInterrupt traceback and death by signal while the
command's modules imported); SIGTERM is 143 with one line, and the run it stopped continues
from its last checkpoint on the next start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream.local_log import LocalLog

REPO = Path(__file__).resolve().parents[2]
ONLINE = {
    "schema": {"labels": [{"name": "label"}], "timestamp": "timestamp",
               "embeddings": [{"name": "user_id"}, {"name": "item_id"}]},
    "default_table": {"dim": 8},
    "data": {"batch_size": 100},
    "model": {"name": "deepfm", "params": {"hidden": [16]}},
    "online": {"deterministic": True, "sync_every_batches": 5, "checkpoint_every_batches": 5},
}


def online_command(tmp_path: Path, ml_small_dir: Path, n: int, out: Path) -> tuple[str, ...]:
    """`streamrec online` arguments over a local log of ml-latest-small's first n events."""
    log = LocalLog(tmp_path / "log")
    for record in load_ml_latest_small(ml_small_dir).slice(0, n).to_pylist():
        log.append(record)
    log.close()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(ONLINE))
    return ("online", str(tmp_path / "job.yaml"), "--source", str(tmp_path / "log"), "--out",
            str(out), "--stop-when-idle", "1", "--json")


def _default_signals() -> None:
    """A child of a background job inherits SIGINT ignored (as a shell's `cmd &` sets it):
    the command then rightly leaves it ignored, so give it the terminal's default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamrec", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=_default_signals)


def test_ctrl_c_during_start_up_is_130_without_a_traceback(tmp_path):
    for delay in (0.05, 0.15, 0.3, 0.6):
        proc = _start("train", "examples/ml100k_deepfm.yaml", "--out", str(tmp_path / "x"), "-q")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (delay, proc.returncode, err[-500:])
        assert "Traceback" not in err, delay


def test_sigterm_is_143_with_one_line_and_the_run_continues_where_it_stopped(
    tmp_path, ml_small_dir
):
    n = 6_000
    cmd = online_command(tmp_path, ml_small_dir, n, tmp_path / "run")
    proc = _start(*cmd)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "checkpoint").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-800:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: terminated (SIGTERM)") and "Traceback" not in err
    again = _start(*cmd)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    status = json.loads(out)
    assert status["events_consumed"] == n and status["events_trained"] == n


def test_a_sigterm_whose_exception_numba_lost_still_exits_143():
    """Under load a SIGTERM inside a numba call came back as a bare SystemError (the handler's
    exception no longer in its chain) and the run ended with exit 1 and a traceback."""
    program = (
        "import sys, streamrec.cli as cli, streamrec.launch as launch\n"
        "def lost(): raise SystemError('returned a result with an exception set')\n"
        "cli.main = lost\n"
        "launch._terminated_by_signal = {flag}\n"
        "launch.main()\n"
    )
    signalled = subprocess.run([sys.executable, "-c", program.format(flag=True)],
                               capture_output=True, text=True, timeout=60)
    assert signalled.returncode == 143 and "Traceback" not in signalled.stderr
    unrelated = subprocess.run([sys.executable, "-c", program.format(flag=False)],
                               capture_output=True, text=True, timeout=60)
    assert unrelated.returncode == 1 and "SystemError" in unrelated.stderr  # not hidden
