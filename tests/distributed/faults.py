"""Fault injection for torchrun jobs: wait for a published sharded checkpoint, then SIGKILL a
worker, and let `--max-restarts` do its work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_a_rank_after_checkpoint(
    job: subprocess.Popen, run: Path, min_step: int, timeout: float = 300
) -> tuple[str, str]:
    """Once RUN/checkpoint/latest names a step ≥ min_step, kill the job's last worker; → the
    job's (stdout, stderr) after it ends. Fails the test if no such checkpoint appears."""
    try:
        deadline = time.time() + timeout
        while True:
            assert job.poll() is None and time.time() < deadline, "no checkpoint was published"
            try:
                step = int((run / "checkpoint" / "latest").read_text().split("-")[1])
            except (OSError, ValueError, IndexError):
                step = 0
            if step >= min_step:
                break
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-f", "-P", str(job.pid), "streamrec"],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[-1]), signal.SIGKILL)
        return job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
