"""A full reload under load fails no request; the batcher merges requests and sheds load."""

import asyncio
import threading
import time

import httpx
import pytest

from streamrec.models.persistence import load_model, save_model
from streamrec.serving.batcher import DynamicBatcher, Overloaded
from streamrec.serving.cache import PredictionCache, row_key
from streamrec.serving.request import CandidateRows, RequestError
from streamrec.serving.snapshot import Snapshot

CONTEXT = {"user_id": 7, "age": 30, "gender": "F", "occupation": "writer", "zip_code": "10001"}


def test_full_reload_under_load_fails_no_request(trained_run, tmp_path, start_server):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    server = start_server(run)
    old_version = server.get("/v1/model").json()["model_version"]
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        body = {"context": CONTEXT, "candidates": [{"item_id": i} for i in range(1, 51)]}
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post(server.url + "/v1/rank", json=body).status_code)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    loaded = load_model(run)
    save_model(
        run / "model", loaded.model, loaded.config, {"input_kinds": loaded.manifest.input_kinds}
    )
    deadline = time.time() + 30
    while server.get("/v1/model").json()["model_version"] == old_version:
        assert time.time() < deadline, "the new model was not picked up"
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    info = server.get("/v1/model").json()
    assert info["reloads"] == 1
    reload = info["last_reload"]  # the phases a user needs to see why a reload was slow
    assert reload["model_version"] == info["model_version"] != old_version
    assert all(reload[k] >= 0 for k in ("load_s", "warmup_s", "swap_s", "free_s"))


def test_a_paced_load_pauses_between_tables_and_loads_the_same_model(trained_run):
    """The watcher loads a new version in steps with pauses, so requests never queue behind
    it; the model must come out identical."""
    pauses: list[float] = []
    paced = Snapshot.load(trained_run, pause=lambda: pauses.append(time.perf_counter()))
    plain = Snapshot.load(trained_run)
    tables = paced.loaded.manifest.tables
    assert len(pauses) == 2 + len(tables) and len(tables) > 2
    rows = _rows(plain, 50).table(plain.kinds)
    assert (paced.predict(rows) == plain.predict(rows)).all()


def _rows(snapshot: Snapshot, n: int) -> CandidateRows:
    items = [{"item_id": i} for i in range(1, n + 1)]
    return CandidateRows.from_dicts({"user_id": 1}, items, snapshot.kinds)


def test_batcher_merges_concurrent_requests_and_sheds_load(trained_run):
    snapshot = Snapshot.load(trained_run)
    batches: list[int] = []
    batcher = DynamicBatcher(
        snapshot,
        max_batch_rows=1000,
        max_delay_ms=50,
        max_queue_rows=300,
        on_batch=lambda rows, s: batches.append(rows),
    )
    batcher.start()

    async def go() -> list:
        futures = [batcher.submit(_rows(snapshot, 100)) for _ in range(3)]
        with pytest.raises(Overloaded):
            batcher.submit(_rows(snapshot, 100))  # 300 rows already queued
        return await asyncio.gather(*futures)

    try:
        results = asyncio.run(go())
    finally:
        batcher.stop()
    assert [r.shape for r in results] == [(100, 1)] * 3
    assert batches == [300]  # one inference for all three requests
    assert (results[0] == results[1]).all()


def test_a_request_with_a_bad_value_fails_alone_in_its_batch(trained_run):
    snapshot = Snapshot.load(trained_run)
    batches: list[int] = []
    batcher = DynamicBatcher(
        snapshot,
        max_batch_rows=1000,
        max_delay_ms=100,
        on_batch=lambda n, s: batches.append(n),
    )
    batcher.start()
    good = CandidateRows.from_dicts(
        {"user_id": 1}, [{"item_id": i} for i in range(1, 31)], snapshot.kinds
    )
    bad = CandidateRows.from_dicts({"user_id": 1}, [{"item_id": "x"}], snapshot.kinds)

    async def go() -> list:
        futures = [batcher.submit(good), batcher.submit(bad), batcher.submit(good)]
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        first, error, second = asyncio.run(go())
    finally:
        batcher.stop()
    assert batches == [61]  # one batch of the three requests
    assert isinstance(error, RequestError) and error.status == 422
    expected = snapshot.predict(good.table(snapshot.kinds))
    assert first.shape == (30, 1) and (first == expected).all() and (second == expected).all()


def test_cache_keys_change_with_the_version_and_respect_the_budget():
    import numpy as np

    a = row_key("1.0", [1, 2])
    assert a == row_key("1.0", [1, 2]) and a != row_key("1.1", [1, 2])
    assert a != row_key("1.0", [1, 3]) and a != row_key("1.0", [2, 1])
    cache = PredictionCache(budget_bytes=2000)
    for i in range(100):
        cache.put(row_key("1", [i]), np.zeros(1, np.float32))
    assert cache.bytes <= 2000 and cache.get(row_key("1", [99])) is not None
    assert cache.get(row_key("1", [0])) is None  # evicted (LRU)
