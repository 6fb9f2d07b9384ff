"""A trained MovieLens-100k model and a real server process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streamrec.config import load_config
from streamrec.train.job import run_training

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def preranker_run(tmp_path_factory, ml100k) -> Path:
    cfg = load_config(REPO / "examples" / "ml100k_cold.yaml")
    cfg.train.epochs = 1
    out = tmp_path_factory.mktemp("preranker") / "run"
    run_training(cfg, out, progress=False)
    return out


class Server:
    def __init__(self, run_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamrec",
                "serve",
                str(run_dir),
                "--port",
                str(self.port),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN in extra else {}
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stdout.read().decode())
            try:
                if (
                    httpx.get(self.url + "/healthz", headers=self.headers, timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, headers=self.headers, timeout=30, **kw)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(trained_run):
    s = Server(trained_run, "--token", TOKEN)
    yield s
    s.stop()


@pytest.fixture
def start_server():
    """Start extra servers in a test; they are stopped at its end."""
    started: list[Server] = []

    def start(run_dir: Path, *extra: str) -> Server:
        started.append(Server(run_dir, *extra))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def chromium() -> str:
    """Debian's chromium (.ci/run installs it; there, a missing browser fails the test)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("STREAMREC_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is required in CI")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return binary


def browser_dom(chromium: str, url: str, profile: Path) -> str:
    """The DOM of `url` after its scripts ran (headless, 6 s of virtual time)."""
    browser = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1100",
        "--virtual-time-budget=6000", "--dump-dom", url,
    ]
    return subprocess.run(browser, capture_output=True, text=True, timeout=120).stdout
