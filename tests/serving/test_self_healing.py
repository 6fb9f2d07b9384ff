"""The server under bad moments: a corrupt delta is quarantined and later deltas still apply
(also across a restart), the next full model heals it; request bodies are bounded while they
are read and slow clients are cut off; health probes stay open under a token."""

import json
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import torch

from streamrec.models.persistence import load_model, save_model
from streamrec.train.delta_export import DeltaExporter

CONTEXT = {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}
ITEMS = [10, 20, 30, 40]  # delta k moves item ITEMS[k-1]


def _scores(server) -> list[float]:
    body = {"context": CONTEXT, "candidates": [{"item_id": i} for i in ITEMS]}
    r = server.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()["scores"]["label"]


def _wait(server, predicate, timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = server.get("/v1/model").json()
        if predicate(info):
            return info
        time.sleep(0.2)
    raise AssertionError(f"timed out; last /v1/model: {info}")


def _flip_a_byte(delta_dir) -> None:
    table = sorted(delta_dir.glob("tables/*.safetensors"))[0]
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))


def test_a_corrupt_delta_is_quarantined_later_ones_apply_and_a_new_model_heals(
    trained_run, tmp_path, start_server
):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    loaded = load_model(run)
    exporter = DeltaExporter(loaded.model, run / "deltas", loaded.manifest.model_version)
    items = loaded.model.dynamic_tables()["item_id"]

    def move(item: int):
        items.apply_gradients(torch.tensor([item]), torch.full((1, items.dim), -5.0))
        return exporter.export()

    move(ITEMS[0])
    server = start_server(run)
    base = _wait(server, lambda i: i["delta_version"] == 1)
    before = _scores(server)
    exporter.deltas_dir = tmp_path / "staging"  # written aside, published whole (as a rename)
    staged = [move(item) for item in ITEMS[1:]]
    _flip_a_byte(staged[0])  # delta 2: corrupt on disk
    for delta in staged:
        shutil.copytree(delta, run / "deltas" / f".{delta.name}.tmp")
        (run / "deltas" / f".{delta.name}.tmp").rename(run / "deltas" / delta.name)
    info = _wait(server, lambda i: i["delta_version"] == 4)
    assert info["deltas_applied"] == 3 and base["deltas_applied"] == 1
    assert [q["version"] for q in info["quarantined_deltas"]] == [2]
    assert "checksum mismatch" in info["quarantined_deltas"][0]["reason"]
    after = _scores(server)
    assert after[1] == before[1]  # delta 2's row stays as it was (stale, reported)
    assert after[2] != before[2] and after[3] != before[3]  # deltas 3 and 4 applied
    ready = server.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "delta 2 quarantined" in ready.json()["degraded"][0]
    metrics = server.get("/metrics").text
    assert "streamrec_deltas_quarantined_total 1.0" in metrics
    assert "streamrec_degraded 1.0" in metrics

    server.stop()  # a restart on the same folder starts, from the base and every valid delta
    restarted = start_server(run)
    info = _wait(restarted, lambda i: i["delta_version"] == 4)
    assert [q["version"] for q in info["quarantined_deltas"]] == [2]
    assert _scores(restarted) == after

    save_model(run / "model", loaded.model, loaded.config,  # the next full snapshot
               {"input_kinds": loaded.manifest.input_kinds})
    healed = _wait(restarted, lambda i: i["reloads"] == 1)
    assert healed["quarantined_deltas"] == [] and healed["degraded"] == []
    assert restarted.get("/readyz").json()["status"] == "ok"
    assert _scores(restarted)[1] != before[1]  # the snapshot carries delta 2's row


def test_a_full_snapshot_delta_heals_a_quarantined_one(trained_run, tmp_path, start_server):
    """Deltas 1–3 incremental, 4 a full snapshot. Delta 2 (corrupt) deleted item 20 and moved
    item 30; after the snapshot the server holds exactly the trainer's rows again."""
    import numpy as np
    import pyarrow as pa

    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    loaded = load_model(run)
    exporter = DeltaExporter(
        loaded.model, tmp_path / "staging", loaded.manifest.model_version, snapshot_every=4
    )
    items = loaded.model.dynamic_tables()["item_id"]
    server = start_server(run)
    before = _scores(server)
    exporter.export()  # 1: nothing moved
    items.delete(np.array([20]))
    items.apply_gradients(torch.tensor([30]), torch.full((1, items.dim), -5.0))
    _flip_a_byte(exporter.export())  # 2: corrupt
    items.apply_gradients(torch.tensor([40]), torch.full((1, items.dim), -5.0))
    exporter.export()  # 3
    snapshot = exporter.export()  # 4: every row, dense weights
    assert json.loads((snapshot / "manifest.json").read_text())["full"] is True
    for v in (1, 2, 3):
        shutil.copytree(exporter.deltas_dir / f"{v:012d}", run / "deltas" / f"{v:012d}")
    degraded = _wait(server, lambda i: i["delta_version"] == 3)
    assert [q["version"] for q in degraded["quarantined_deltas"]] == [2]
    stale = _scores(server)
    assert stale[1] == before[1] and stale[2] == before[2]  # delta 2 never reached the server
    shutil.copytree(snapshot, run / "deltas" / snapshot.name)
    healed = _wait(server, lambda i: i["delta_version"] == 4)
    assert healed["quarantined_deltas"] == [] and healed["degraded"] == []
    assert server.get("/readyz").json()["status"] == "ok"
    rows = pa.table({**{k: [v] * 4 for k, v in CONTEXT.items()}, "item_id": ITEMS,
                     "genres": [None] * 4})
    trainer_side = loaded.model.predict(loaded.config.schema.encode(rows, with_labels=False))
    np.testing.assert_allclose(_scores(server), trainer_side[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert healed["tables"]["item_id"]["rows"] == len(items)  # item 20 is gone there too


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_chunked_body_is_cut_off_at_the_limit_without_filling_memory(server):
    server.post("/v1/rank", json={"context": CONTEXT, "candidates": [{"item_id": 1}]})
    start = _rss_mb(server.proc.pid)
    peak = [start]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb(server.proc.pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    chunk = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {server.headers['Authorization']}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(300):  # 300 MB, no declared length
                s.sendall(b"100000\r\n" + chunk + b"\r\n")
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        s.settimeout(10)
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
    done.set()
    watcher.join()
    assert peak[0] - start < 50, (start, peak[0], sent)
    if answer:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    ok = {"context": CONTEXT, "candidates": [{"item_id": 1}]}
    assert server.post("/v1/rank", json=ok).status_code == 200  # still serving


def test_slow_headers_and_bodies_are_cut_off_and_others_still_served(
    trained_run, tmp_path, start_server
):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    manifest["config"]["serving"].update(header_timeout_s=1.0, body_timeout_s=1.0)
    (run / "model" / "manifest.json").write_text(json.dumps(manifest))
    server = start_server(run)
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    for i, s in enumerate(slow):  # half trickle their headers, half their body
        s.sendall(b"POST /v1/rank HTTP/1.1\r\n" + (
            b"Host: x\r\nContent-Length: 100000\r\n\r\n" if i % 2 else b""))
    started = time.time()
    closed = 0
    while closed < len(slow) and time.time() - started < 6:
        for s in slow:
            try:
                s.sendall(b"X")  # a header byte at a time
            except OSError:
                pass
        time.sleep(0.2)
        closed = 0
        for s in slow:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    elapsed = time.time() - started
    for s in slow:
        s.close()
    assert closed == len(slow) and elapsed < 4, (closed, elapsed)
    assert server.post("/v1/rank", json={"context": CONTEXT, "candidates": []}).status_code in (
        200,
        422,
    )


def test_health_probes_are_open_under_a_token_unless_asked(trained_run, start_server):
    guarded = start_server(trained_run, "--token", "s3cret", "--token-guards-health")
    assert httpx.get(guarded.url + "/healthz").status_code == 401
    assert httpx.get(guarded.url + "/readyz").status_code == 401
    assert guarded.get("/readyz").status_code == 200


def test_health_probes_need_no_token_by_default(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert httpx.get(server.url + "/v1/model").status_code == 401
    wrong = {"Authorization": server.headers["Authorization"] + "x"}
    assert httpx.get(server.url + "/v1/model", headers=wrong).status_code == 401


def test_non_finite_scores_are_refused_with_503_never_served_as_null(trained_run, tmp_path):
    """A delta whose item rows are finite but so large that scores overflow (NaN rows are
    refused whole when read; no variant to fall back on): the requests that touch them get
    503 naming the cause; the rest are answered; nothing is cached."""
    from starlette.testclient import TestClient

    from streamrec.serving.app import create_app
    from streamrec.serving.options import ServerOptions

    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    loaded = load_model(run)
    exporter = DeltaExporter(loaded.model, run / "deltas", loaded.manifest.model_version)
    items = loaded.model.dynamic_tables()["item_id"]
    items.upsert(np.array([10]), np.full((1, items.dim), 3e38, np.float32))
    exporter.export()
    # the delta is applied before serving
    with TestClient(create_app(ServerOptions(model_dir=run))) as client:
        poisoned = {"context": CONTEXT, "candidates": [{"item_id": 10}, {"item_id": 20}]}
        for _ in range(2):  # the second time too: a NaN is never cached
            r = client.post("/v1/rank", json=poisoned)
            assert r.status_code == 503 and "non-finite scores" in r.json()["error"]
        fine = client.post("/v1/rank", json={"context": CONTEXT, "candidates": [{"item_id": 20}]})
        assert fine.status_code == 200
        assert 'streamrec_unavailable_total{reason="non_finite"} 2.0' in client.get("/metrics").text
        ready = client.get("/readyz").json()  # marked at once, not at the next check
        assert ready["status"] == "degraded" and "non-finite scores" in ready["degraded"][-1]


def test_a_model_with_nan_rows_is_refused_at_start_with_one_line(trained_run, tmp_path):
    import subprocess
    import sys

    loaded = load_model(trained_run)
    items = loaded.model.dynamic_tables()["item_id"]
    items.upsert(np.array([10]), np.full((1, items.dim), np.nan, np.float32))
    save_model(tmp_path / "model", loaded.model, loaded.config,
               {"input_kinds": loaded.manifest.input_kinds})
    done = subprocess.run([sys.executable, "-m", "streamrec", "serve", str(tmp_path / "model"),
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "1 rows of" in lines[0] and "NaN or inf" in lines[0]


def test_a_delta_with_nan_rows_is_quarantined_and_the_last_good_rows_keep_answering(
    trained_run, tmp_path, start_server
):
    """A delta whose checksums are valid but whose rows are NaN (a diverged trainer): refused
    whole, /readyz says why, and every request is still answered from the last good rows."""
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    loaded = load_model(run)
    exporter = DeltaExporter(loaded.model, run / "deltas", loaded.manifest.model_version)
    items = loaded.model.dynamic_tables()["item_id"]
    items.apply_gradients(torch.tensor([ITEMS[0]]), torch.full((1, items.dim), -5.0))
    exporter.export()
    server = start_server(run)
    _wait(server, lambda i: i["delta_version"] == 1)
    before = _scores(server)
    items.apply_gradients(torch.tensor(ITEMS), torch.full((len(ITEMS), items.dim), float("nan")))
    assert torch.isnan(items.lookup(torch.tensor(ITEMS))).all()
    exporter.export()
    info = _wait(server, lambda i: i["delta_version"] == 2)
    assert [q["version"] for q in info["quarantined_deltas"]] == [2]
    assert "4 rows hold NaN or inf" in info["quarantined_deltas"][0]["reason"]
    for _ in range(10):
        assert _scores(server) == before  # 200s, from the rows before the poisoned delta
    ready = server.get("/readyz").json()
    assert ready["status"] == "degraded" and "NaN or inf" in ready["degraded"][0]
