"""The server as a user meets it: a subprocess on loopback, spoken to over HTTP."""

import json
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch

from streamrec.models.persistence import load_model, save_model
from streamrec.train.delta_export import DeltaExporter
from tests.serving.conftest import free_port

CONTEXT = {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}


def _candidates(items):
    return [{"item_id": i, "genres": ["Comedy", "Drama"]} for i in items]


def _offline_scores(loaded, items) -> np.ndarray:
    """What the model in memory scores CONTEXT with these items, [len(items)]."""
    n = len(items)
    rows = pa.table(
        {**{k: [v] * n for k, v in CONTEXT.items()}, "item_id": items,
         "genres": [["Comedy", "Drama"]] * n}
    )
    return loaded.model.predict(loaded.config.schema.encode(rows, with_labels=False))[:, 0].numpy()


def test_scores_equal_the_offline_model(server, trained_run):
    items = list(range(1, 101))
    r = server.post("/v1/rank", json={"context": CONTEXT, "candidates": _candidates(items)})
    assert r.status_code == 200, r.text
    body = r.json()
    served = np.array(body["scores"]["label"])
    assert served.shape == (100,) and ((served >= 0) & (served <= 1)).all()
    loaded = load_model(trained_run)
    np.testing.assert_allclose(served, _offline_scores(loaded, items), rtol=1e-5, atol=1e-6)
    assert body["model_version"].startswith(str(loaded.manifest.model_version))


def test_model_endpoint_lists_context_and_candidate_features(server):
    info = server.get("/v1/model").json()
    assert info["features"]["context"] == ["user_id", "age", "gender", "occupation", "zip_code"]
    assert info["features"]["candidate"] == ["item_id", "genres"]
    assert info["tables"]["item_id"]["rows"] > 1000


def test_bad_input_gets_the_right_status(server):
    ok = {"context": CONTEXT, "candidates": _candidates([1])}
    assert server.post("/v1/rank", content=b"{not json").status_code == 422
    r = server.post("/v1/rank", json={"candidates": [{"item_idd": 3}]})
    assert r.status_code == 422 and "item_idd" in r.json()["error"]
    r = server.post("/v1/rank", json={"candidates": [{"item_id": "three"}]})
    assert r.status_code == 422 and "item_id" in r.json()["error"]
    assert server.post("/v1/rank", json={"context": CONTEXT}).status_code == 422
    r = server.post("/v1/rank", json={"candidates": [{"item_id": 2**64}]})  # beyond int64
    assert r.status_code == 422 and "item_id" in r.json()["error"]
    assert server.post("/v1/rank", json={"candidates": _candidates(range(1001))}).status_code == 413
    huge = {"candidates": [{"item_id": 1, "genres": ["x" * 1000] * 3000}]}
    assert server.post("/v1/rank", json=huge).status_code == 413
    never_seen = {"context": {**CONTEXT, "user_id": 10**12}, "candidates": _candidates([10**9])}
    assert server.post("/v1/rank", json=never_seen).status_code == 200
    assert server.post("/v1/rank", json=ok).status_code == 200


def test_token_is_enforced(server):
    assert httpx.get(server.url + "/v1/model").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(server.url + "/v1/model", headers=wrong).status_code == 401


def test_a_delta_changes_touched_ids_only(server, trained_run):
    _a_delta_changes_item_50_only(server, load_model(trained_run), trained_run / "deltas")


def _a_delta_changes_item_50_only(server, loaded, deltas_dir) -> None:
    """The trainer moves item 50's row and exports a delta: once the server applied it, item
    50's score moved and item 1's did not."""
    body = {"context": CONTEXT, "candidates": _candidates([50, 1])}
    before = server.post("/v1/rank", json=body).json()["scores"]["label"]
    exporter = DeltaExporter(loaded.model, deltas_dir, loaded.manifest.model_version)
    item_table = loaded.model.dynamic_tables()["item_id"]
    item_table.apply_gradients(torch.tensor([50]), torch.full((1, item_table.dim), -5.0))
    exporter.export()
    deadline = time.time() + 15
    while server.get("/v1/model").json()["deltas_applied"] < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert server.get("/v1/model").json()["deltas_applied"] == 1
    after = server.post("/v1/rank", json=body).json()["scores"]["label"]
    assert abs(after[0] - before[0]) > 1e-3  # item 50's row changed
    assert after[1] == pytest.approx(before[1], abs=1e-7)  # item 1's did not


def test_a_delta_for_another_base_model_is_skipped_unread(trained_run, tmp_path, start_server):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    server = start_server(run)
    body = {"context": CONTEXT, "candidates": _candidates([1])}
    before = server.post("/v1/rank", json=body).json()["scores"]["label"]
    loaded = load_model(run)
    other_base = loaded.manifest.model_version + 1
    exporter = DeltaExporter(loaded.model, run / "deltas", other_base)
    item_table = loaded.model.dynamic_tables()["item_id"]
    item_table.apply_gradients(torch.tensor([1]), torch.full((1, item_table.dim), -5.0))
    written = exporter.export()
    for tensors in written.rglob("*.safetensors"):
        tensors.write_bytes(b"corrupt, and never read")  # only the manifest is read
    deadline = time.time() + 15
    while server.get("/v1/model").json()["deltas_skipped"] < 1 and time.time() < deadline:
        time.sleep(0.2)
    info = server.get("/v1/model").json()
    assert info["deltas_skipped"] == 1 and info["deltas_applied"] == 0
    assert info["delta_version"] == int(written.name)  # not retried on every poll
    after = server.post("/v1/rank", json=body).json()["scores"]["label"]
    assert after == pytest.approx(before, abs=1e-7)


def test_metrics_expose_requests_latency_batches_and_cache(server):
    text = server.get("/metrics").text
    for name in (
        "streamrec_requests_total",
        "streamrec_request_seconds_bucket",
        "streamrec_batch_rows_bucket",
        "streamrec_queue_rows",
        "streamrec_cache_hits_total",
        "streamrec_deltas_applied_total",
    ):
        assert name in text


def _metric(text: str, name: str) -> float:
    """The value of an unlabelled sample line `name value` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_expose_model_version_scores_unknown_ids_and_503_reasons(server):
    """The model info metric names the versions /v1/model reports; every served score lands in
    the score histogram; ids the model never saw count toward the unknown-id rate."""
    before = server.get("/metrics").text
    known = {"context": CONTEXT, "candidates": _candidates([1, 2, 3])}
    unseen_items = [{"item_id": 10**9 + i} for i in range(4)]
    unseen = {"context": {"user_id": 10**9}, "candidates": unseen_items}
    assert server.post("/v1/rank", json=known).status_code == 200
    assert server.post("/v1/rank", json=unseen).status_code == 200
    text = server.get("/metrics").text
    info = server.get("/v1/model").json()
    line = next(x for x in text.splitlines() if x.startswith("streamrec_model_info{"))
    assert f'serving_version="{info["serving_version"]}"' in line and 'model="deepfm"' in line
    scored = _metric(text, "streamrec_predicted_score_count") - _metric(
        before, "streamrec_predicted_score_count"
    )
    assert scored == 7  # 3 + 4 candidates, one task
    bounded = _metric(text, 'streamrec_predicted_score_bucket{le="+Inf"}')
    assert bounded == _metric(text, "streamrec_predicted_score_count")
    looked_up = _metric(text, "streamrec_ids_looked_up_total") - _metric(
        before, "streamrec_ids_looked_up_total"
    )
    unknown = _metric(text, "streamrec_ids_unknown_total") - _metric(
        before, "streamrec_ids_unknown_total"
    )
    assert looked_up > 0 and unknown >= 5  # the unseen user and its 4 unseen items at least
    assert unknown < looked_up
    assert "streamrec_unavailable_total" in text or "# HELP streamrec_unavailable" in text


def test_a_port_in_use_is_refused_before_the_model_loads(trained_run):
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "streamrec", "serve", str(trained_run), "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "serving" not in done.stderr and time.monotonic() - started < 30


def test_a_copy_with_int8_rows_scores_close_and_follows_the_trainers_deltas(
    trained_run, tmp_path, start_server
):
    """`streamrec export --rows int8`: a smaller copy, scored within int8's rounding of the
    fp32 model, that keeps taking the deltas the trainer writes for the model it came from."""
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    copy = tmp_path / "int8"
    exported = subprocess.run(
        [sys.executable, "-m", "streamrec", "export", str(run), "--out", str(copy),
         "--rows", "int8", "--json"], capture_output=True, text=True, timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    report = json.loads(exported.stdout)
    assert set(report["row_precision"].values()) == {"int8", "fp32"}  # dim-1 terms stay fp32
    assert report["weight_bytes_after"] < 0.45 * report["weight_bytes_before"]  # 24 B vs 64
    assert report["table_bytes_after"] < 0.8 * report["table_bytes_before"]
    server = start_server(copy, "--deltas", str(run / "deltas"))
    info = server.get("/v1/model").json()
    assert info["tables"]["item_id"]["row_precision"] == "int8"
    items = list(range(1, 101))
    body = {"context": CONTEXT, "candidates": _candidates(items)}
    served = np.array(server.post("/v1/rank", json=body).json()["scores"]["label"])
    loaded = load_model(run)
    gap = np.abs(served - _offline_scores(loaded, items))
    assert 0 < gap.max() < 0.01, gap.max()  # rounded, not replaced
    _a_delta_changes_item_50_only(server, loaded, run / "deltas")


def test_serve_rows_int8_encodes_the_model_and_every_reload(trained_run, tmp_path, start_server):
    """`serve --rows int8` (serving.row_precision): the trainer's fp32 model is held in int8
    rows, and so is the next model the trainer publishes."""
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    server = start_server(run, "--rows", "int8")
    info = server.get("/v1/model").json()
    precisions = {name: t["row_precision"] for name, t in info["tables"].items()}
    assert precisions["item_id"] == precisions["user_id"] == "int8"
    assert set(precisions.values()) == {"int8", "fp32"}  # the dim-1 linear terms stay fp32
    items = list(range(1, 51))
    body = {"context": CONTEXT, "candidates": _candidates(items)}
    served = np.array(server.post("/v1/rank", json=body).json()["scores"]["label"])
    loaded = load_model(run)
    assert 0 < np.abs(served - _offline_scores(loaded, items)).max() < 0.01
    save_model(run / "model", loaded.model, loaded.config)  # the trainer publishes a new one
    deadline = time.time() + 30
    while server.get("/v1/model").json()["model_version"] == info["model_version"]:
        assert time.time() < deadline, "the new model was not loaded"
        time.sleep(0.2)
    reloaded = server.get("/v1/model").json()["tables"]
    assert reloaded["item_id"]["row_precision"] == "int8"
    bad = subprocess.run(
        [sys.executable, "-m", "streamrec", "serve", str(run), "--port", str(free_port()),
         "--rows", "int4"], capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "row_precision" in bad.stderr and "Traceback" not in bad.stderr


def test_row_precision_reaches_the_pre_ranker_too(trained_run):
    from streamrec.serving.prerank_stage import PreRankStage

    stage = PreRankStage.load(trained_run, keep=10, row_precision="int8")
    tables = stage.snapshot.model.dynamic_tables()
    assert tables["item_id"].row_precision == "int8"
    assert tables["item_id@linear"].row_precision == "fp32"  # dim 1: int8 would be larger
