"""The status page at GET /, loaded by a real browser (headless Chromium) from a real server."""

import re
import shutil
import subprocess
import time
from datetime import datetime, timezone

import pytest
import torch

from streamrec.models.persistence import load_model
from streamrec.store.manifest import DeltaProgress
from streamrec.train.delta_export import DeltaExporter

TOKEN = "s3cret"
BODY = {
    "context": {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician"},
    "candidates": [{"item_id": i, "genres": ["Drama"]} for i in (1, 50, 100)],
}


@pytest.fixture
def status_server(trained_run, tmp_path, start_server):
    """A server with --token on its own copy of the run (the deltas it sees are this test's)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("deltas"))
    server = start_server(run, "--token", TOKEN)
    server.run_dir = run
    return server


def _write_delta(run, consumed_seconds_ago: float) -> None:
    """A delta as an online trainer writes it: rows, when its events were read, a warning."""
    loaded = load_model(run)
    exporter = DeltaExporter(loaded.model, run / "deltas", loaded.manifest.model_version)
    exporter.version = len(list((run / "deltas").glob("0*"))) if (run / "deltas").exists() else 0
    table = loaded.model.dynamic_tables()["item_id"]
    table.apply_gradients(torch.tensor([50]), torch.full((1, table.dim), -1.0))
    now = time.time()
    exporter.export(
        DeltaProgress(
            consumed_at=[now - consumed_seconds_ago, now - 1.0],
            health=[{"rule": "loss_not_decreasing", "message": "flat for 500 steps"}],
        )
    )


def _wait_for_delta(server, version: int) -> dict:
    deadline = time.time() + 15
    while time.time() < deadline:
        status = server.get("/v1/status").json()
        if status["versions"]["delta"] >= version:
            return status
        time.sleep(0.2)
    raise AssertionError("the delta was not applied")


def test_status_json_reports_traffic_freshness_and_training_health(status_server):
    assert status_server.get("/").status_code == 200  # the page itself needs no token
    import httpx

    assert httpx.get(status_server.url + "/v1/status").status_code == 401  # its data does
    for _ in range(20):
        assert status_server.post("/v1/rank", json=BODY).status_code == 200
    assert status_server.post("/v1/rank", json={"context": {}}).status_code == 422
    _write_delta(status_server.run_dir, consumed_seconds_ago=7.0)
    status = _wait_for_delta(status_server, 1)
    assert status["model"] == "deepfm" and status["status"] == "ok"
    assert status["versions"]["serving"].endswith(".1")
    assert 7.0 <= status["freshness"]["event_to_served_s"] < 30.0
    assert status["freshness"]["delta_lag_s"] < 30.0
    assert status["training_health"][0]["rule"] == "loss_not_decreasing"
    minute = status["traffic"]["last_minute"]
    assert minute["requests"] == 21 and minute["p99_ms"] >= minute["p50_ms"] > 0
    counts = {(r["endpoint"], r["status"]): r["count"] for r in status["responses"]}
    assert counts[("rank", "200")] == 20 and counts[("rank", "422")] == 1
    assert status["cache"]["hit_rate"] > 0.5  # the same three rows, twenty times


def test_the_page_shows_the_version_and_a_latency_chart_in_a_browser(
    status_server, chromium, tmp_path
):
    for _ in range(30):
        status_server.post("/v1/rank", json=BODY)
    _write_delta(status_server.run_dir, consumed_seconds_ago=3.0)
    version = _wait_for_delta(status_server, 1)["versions"]["serving"]
    page = f"{status_server.url}/#token={TOKEN}"  # the page keeps the token, drops the hash
    browser = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1100",
        "--virtual-time-budget=6000",
    ]
    dom = subprocess.run(
        [*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    model_ms, delta = version.split(".")
    trained = datetime.fromtimestamp(int(model_ms) / 1000, timezone.utc)
    human = f"{trained:%Y-%m-%d %H:%M:%S} UTC + delta {delta}"  # not a 13-digit number
    assert f'<b id="serving-version" data-version="{version}">{human}</b>' in dom, dom[-2000:]
    assert "one model, every request (no --variant)" in dom  # no box left empty
    points = int(re.search(r'id="chart" data-points="(\d+)"', dom).group(1))
    assert points >= 1
    assert dom.count("<polyline") == 3  # QPS, p50, p99
    assert dom.count("<circle") == 2 * points  # p50 and p99 of each bucket with requests
    assert "loss_not_decreasing: flat for 500 steps" in dom  # the trainer's warning
    assert '<span id="error"></span>' in dom  # no fetch failed
    shot = tmp_path / "status-page.png"
    subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
