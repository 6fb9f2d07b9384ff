"""`streamrec serve` as a child process for the benchmarks that load it over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_server(
    model: Path, port: int, *extra: str, src: Path | None = None
) -> subprocess.Popen:
    """Serve `model` on 127.0.0.1:`port` with the prediction cache off (every row computed)
    and `extra` flags; returns once /readyz answers 200. `src`: another checkout's `src/` to
    run instead of this one (a benchmark's "today's code" peer)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec", "serve", str(model), "--port", str(port),
         "--cache-bytes", "0", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"streamrec serve {model} did not start")
