"""The loop over real processes and HTTP: the server logs what it served (with the features every
stage used), users' actions arrive on POST /v1/feedback, `streamrec online` joins the two and
trains — the ranker and the retriever, each its own run — and their deltas reach the same
server: the clicked item's score changes, and so do the retrieval stage's towers and index."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streamrec.data.stream import LocalLogSource
from streamrec.store import read_manifest
from streamrec.store.delta import DeltaDir, list_deltas

REPO = Path(__file__).resolve().parents[2]
USERS = [{"user_id": u, "age": 20 + u, "gender": "F", "occupation": "writer"} for u in range(20)]

pytestmark = pytest.mark.slow


def _records(path: Path, expected: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        got = [json.loads(m.value) for m in LocalLogSource(path, "test").poll(10_000)]
        if len(got) >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _online(config: str, imps: Path, acts: Path, out: Path, init: Path, *extra: str) -> dict:
    """`streamrec online` over the impression log joined with the actions, until idle: every
    impression trained, nothing dead-lettered. → its final status."""
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "online", str(REPO / "examples" / config),
         "--source", str(imps), "--actions", str(acts), "--out", str(out),
         "--init-model", str(init), "--stop-when-idle", "6", "--json",
         "--set", "online.join.window_seconds=2", "--set", "online.sync_interval_seconds=1",
         *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["events_trained"] == 10 * len(USERS) and status["dead_lettered"] == 0, status
    return status


def test_served_impressions_join_feedback_and_the_delta_changes_the_clicked_score(
    trained_run, retriever_run, start_server, tmp_path
):
    imps, acts, online = tmp_path / "impressions", tmp_path / "actions", tmp_path / "online"
    online_retriever = tmp_path / "online_retriever"
    server = start_server(
        trained_run, "--retriever", str(retriever_run), "--log-impressions", str(imps),
        "--actions", str(acts), "--deltas", str(online / "deltas"),
        "--retriever-deltas", str(online_retriever / "deltas"),
    )
    answers = [
        server.post("/v1/recommend", json={"user": user, "k": 10}).json() for user in USERS
    ]
    records = _records(imps, len(USERS))
    assert len(records) == len(USERS)
    served = server.get("/v1/model").json()
    read = set(served["features"]["context"]) | set(served["retrieval"]["user_features"])
    for user, answer, record in zip(USERS, answers, records, strict=True):
        assert record["request_id"] == answer["request_id"]
        assert record["context"] == {f: v for f, v in user.items() if f in read}
        assert [i["item_id"] for i in record["items"]] == answer["items"]
        assert [i["position"] for i in record["items"]] == list(range(10))
        assert [i["scores"]["ranking"] for i in record["items"]] == answer["scores"]
        assert all(i["features"]["item_id"] == i["item_id"] for i in record["items"])
        assert record["versions"] == answer["versions"]

    clicked = {a["request_id"]: a["items"][0] for a in answers[::2]}  # half the users click
    for request_id, item in clicked.items():
        r = server.post("/v1/feedback", json={"request_id": request_id, "item_id": item})
        assert r.status_code == 202 and r.json()["known_request"] is True
    unknown = server.post("/v1/feedback", json={"request_id": "elsewhere", "item_id": 1})
    assert unknown.status_code == 202 and unknown.json()["known_request"] is False
    for bad in ({"item_id": 1}, {"request_id": "x", "item_id": "1"},
                {"request_id": "x", "item_id": 1, "time": 1.7e12}):  # milliseconds
        assert server.post("/v1/feedback", json=bad).status_code == 422, bad
    intake = server.get("/v1/status").json()["feedback"]
    assert intake["accepted"] == len(clicked) + 1 and intake["unknown_request"] == 1
    deadline = time.monotonic() + 30  # 202 means queued: wait until the writer wrote them
    while server.get("/v1/status").json()["feedback"]["writer"]["written"] < len(clicked) + 1:
        assert time.monotonic() < deadline, server.get("/v1/status").json()["feedback"]
        time.sleep(0.1)

    first = answers[0]
    probe = {"context": USERS[0], "candidates": [{"item_id": first["items"][0]}]}
    before = server.post("/v1/rank", json=probe).json()["scores"]["label"][0]
    status = _online("ml100k_deepfm.yaml", imps, acts, online, trained_run / "model")
    assert status["windowed"]["label"]["positives"] == len(clicked)
    newest = list_deltas(online / "deltas")[-1]  # every section written is a declared one
    assert DeltaDir.open(online / "deltas", newest).manifest.model_extra == {}
    checkpoint = read_manifest(online / "checkpoint")
    assert checkpoint.model_extra == {} and checkpoint.online.events_trained == 10 * len(USERS)
    deadline = time.monotonic() + 30
    while server.get("/v1/model").json()["deltas_applied"] < 1:
        assert time.monotonic() < deadline, "the server never applied the loop's delta"
        time.sleep(0.2)
    after = server.post("/v1/rank", json=probe).json()["scores"]["label"][0]
    assert after != before

    # The retriever learns from the same two streams (its positives: the clicked impressions)
    _online(  # its own consumer group: its own reading position, beside the ranker's
        "ml100k_two_tower.yaml", imps, acts, online_retriever, retriever_run / "model",
        "--group", "retriever",
    )
    deadline = time.monotonic() + 30
    while (retrieval := server.get("/v1/model").json()["retrieval"])["delta_version"] < 1:
        assert time.monotonic() < deadline, "the server never served the retriever's delta"
        time.sleep(0.2)
    assert retrieval["last_reindex"]["items"] == retrieval["items"]  # the whole catalog
    again = server.post("/v1/recommend", json={"user": USERS[0], "k": 10}).json()
    assert again["versions"]["retrieval"].endswith(f".{retrieval['delta_version']}")
    shown = {r["request_id"]: r for r in _records(imps, len(USERS) + 1)}
    before_scores = {i["item_id"]: i["scores"]["retrieval"] for i in records[0]["items"]}
    after_scores = {
        i["item_id"]: i["scores"]["retrieval"] for i in shown[again["request_id"]]["items"]
    }
    assert after_scores != before_scores  # new towers: new user vector, new item vectors


def test_a_stream_that_cannot_be_written_drops_and_counts_and_serving_goes_on(
    trained_run, retriever_run, start_server
):
    """Nothing listens on port 9: the writer retries, its queue (4) fills, and every further
    answer is dropped from the log and counted — the requests themselves all succeed."""
    server = start_server(
        trained_run, "--retriever", str(retriever_run),
        "--log-impressions", "redis://127.0.0.1:9/impressions", "--log-queue", "4",
    )
    client = httpx.Client(base_url=server.url, timeout=30)
    codes = [client.post("/v1/recommend", json={"user": u, "k": 5}).status_code for u in USERS]
    assert codes == [200] * len(USERS)
    log = client.get("/v1/status").json()["impression_log"]
    assert log["requests_answered"] == len(USERS)
    assert log["records_dropped"] >= len(USERS) - 5 and log["records_logged"] == 0
    metrics = client.get("/metrics").text
    assert f"streamrec_impressions_dropped_total {float(log['records_dropped'])}" in metrics
    deadline = time.monotonic() + 30
    while not any("impression log" in r for r in client.get("/readyz").json()["degraded"]):
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)
