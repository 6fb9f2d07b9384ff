"""The retrieve → rank cascade over HTTP, and the demo that runs the whole system."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER = {"user_id": 5, "age": 33, "gender": "F", "occupation": "other"}


def test_recommend_returns_k_distinct_items_and_honours_exclude(
    trained_run, retriever_run, start_server
):
    server = start_server(trained_run, "--retriever", str(retriever_run))
    r = server.post("/v1/recommend", json={"user": USER, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 == len(set(body["items"]))
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert set(body["versions"]) == {"retrieval", "ranking"}
    excluded = body["items"][:5]
    again = server.post("/v1/recommend", json={"user": USER, "k": 10, "exclude": excluded})
    assert not set(again.json()["items"]) & set(excluded)
    assert server.post("/v1/recommend", json={"user": {"nope": 1}}).status_code == 422
    assert server.post("/v1/recommend", json={"user": USER, "k": 0}).status_code == 422
    wrong_type = server.post("/v1/recommend", json={"user": {**USER, "user_id": "one"}})
    assert wrong_type.status_code == 422 and "$.user.user_id" in wrong_type.json()["error"]
    deep = b'{"user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 kB: under the size cap
    for path in ("/v1/recommend", "/v1/items", "/v1/rank"):  # were 500 (RecursionError)
        r = server.post(path, content=deep)
        assert r.status_code == 422 and r.json()["error"].startswith("invalid"), (path, r.text)
    deep_in_place = b'{"user": {"genres": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    r = server.post("/v1/recommend", content=deep_in_place)
    assert r.status_code == 422 and "$.user.genres" in r.json()["error"], r.text


def test_an_item_added_online_becomes_retrievable_without_a_rebuild(
    trained_run, retriever_run, start_server
):
    server = start_server(trained_run, "--retriever", str(retriever_run))
    before = server.get("/v1/model").json()["retrieval"]["items"]
    added = server.post(
        "/v1/items", json={"items": [{"item_id": 777_777, "genres": ["Comedy", "Romance"]}]}
    )
    assert added.status_code == 200 and added.json()["items_in_index"] == before + 1
    seen: list[int] = []
    for _ in range(12):  # page through the whole catalog, 200 at a time
        page = server.post("/v1/recommend", json={"user": USER, "k": 200, "exclude": seen})
        items = page.json()["items"]
        if 777_777 in items or not items:
            break
        seen += items
    assert 777_777 in items


def test_three_stages_retrieve_prerank_rank_with_counts_and_timings(
    trained_run, retriever_run, preranker_run, start_server
):
    server = start_server(trained_run, "--retriever", str(retriever_run),
                          "--preranker", str(preranker_run), "--prerank-keep", "50")
    r = server.post("/v1/recommend", json={"user": USER, "k": 10, "debug": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 == len(set(body["items"]))
    assert set(body["versions"]) == {"retrieval", "preranking", "ranking"}
    debug = body["debug"]
    assert (debug["retrieved"], debug["preranked"], debug["ranked"]) == (200, 50, 50)
    assert set(debug["seconds"]) == {"retrieval", "preranking", "ranking"}
    assert all(0 < t < 5 for t in debug["seconds"].values())
    # The pre-ranker's 50 are its own top 50 of the 200 the retriever returned.
    plain = server.post("/v1/recommend", json={"user": USER, "k": 200}).json()
    assert "debug" not in plain and len(plain["items"]) == 50  # only 50 reach the ranker
    assert server.get("/v1/model").json()["preranking"]["keep"] == 50
    metrics = server.get("/metrics").text
    assert 'streamrec_recommend_stage_seconds_count{stage="preranking"} 2.0' in metrics
    wrong_type = server.post("/v1/recommend", json={"user": {**USER, "age": "old"}})
    assert wrong_type.status_code == 422


def test_the_preranker_follows_its_own_deltas_and_reports_a_corrupt_one(
    trained_run, retriever_run, preranker_run, start_server, tmp_path
):
    import shutil

    import torch

    from streamrec.models.persistence import load_model
    from streamrec.train.delta_export import DeltaExporter

    run = tmp_path / "cold"
    shutil.copytree(preranker_run / "model", run / "model")
    server = start_server(trained_run, "--retriever", str(retriever_run), "--preranker", str(run))
    loaded = load_model(run)
    exporter = DeltaExporter(loaded.model, run / "deltas", loaded.manifest.model_version)
    items = loaded.model.dynamic_tables()["item_id"]
    body = {"user": USER, "k": 10, "debug": True}
    before = server.post("/v1/recommend", json=body).json()
    assert before["versions"]["preranking"].endswith(".0")
    items.apply_gradients(torch.tensor([50]), torch.full((1, items.dim), -5.0))
    exporter.export()
    exporter.export()  # delta 2: no rows, then corrupted on disk below
    manifest = run / "deltas" / "000000000002" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version"', '"versio"'))
    deadline = time.time() + 20
    while time.time() < deadline:
        status = server.get("/v1/status").json()
        if status["degraded"]:
            break
        time.sleep(0.2)
    assert status["versions"]["preranking"].endswith(".2")  # delta 1 applied, 2 skipped
    assert status["degraded"][0].startswith("pre-ranker: delta 2 quarantined")
    assert server.get("/readyz").json()["status"] == "degraded"
    assert server.get("/v1/model").json()["preranking"]["deltas_applied"] == 1
    after = server.post("/v1/recommend", json=body)
    assert after.status_code == 200 and after.json()["versions"]["preranking"].endswith(".2")


def test_a_preranker_without_a_retriever_is_refused_at_start(trained_run, preranker_run):
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "serve", str(trained_run), "--preranker",
         str(preranker_run)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "add --retriever" in result.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_system(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec",
            "demo",
            "--json",
            "-q",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["recall@50"] >= 1.5 * report["baseline_recall@50"]
    served, first = report["cascade_recall@50"]["ranked"], report["cascade_recall@50"]["retrieval"]
    assert served >= 0.97 * first  # the ranked list no longer trails its first stage (was 0.2×)
    loop = report["loop"]
    assert loop["impressions_logged"] == loop["impressions_served"] > 0
    assert loop["impressions_dropped"] == 0 and loop["actions_joined"] > 0
    assert loop["examples_trained"] == loop["rounds"] * loop["users"] * loop["k"]
    assert loop["ctr"]["closed_loop"] > loop["ctr"]["popularity"]
    assert report["event_to_delta_p99_s"] <= 10
    assert len(report["recommendations"]) == 3
    assert all(len(set(items)) == 10 for items in report["recommendations"].values())


def _resolved(schema: dict, components: dict) -> dict:
    """The schema with every $ref into components inlined (for jsonschema)."""
    import json

    text = json.dumps(schema)
    for _ in range(5):
        for name, body in components.items():
            ref = json.dumps({"$ref": f"#/components/schemas/{name}"})
            text = text.replace(ref, json.dumps(body))
    return json.loads(text)


def test_openapi_document_is_valid_and_every_readme_request_matches_it(
    trained_run, retriever_run, start_server, tmp_path
):
    """GET /openapi.json (generated from the request decoders' own msgspec types) validates as
    OpenAPI 3.1; each `curl … -d BODY` in the README validates against its path's schema and
    is accepted by the server; a body the schema refuses is refused by the server too."""
    import json
    import re
    from pathlib import Path

    import jsonschema
    from openapi_spec_validator import validate

    server = start_server(
        trained_run, "--retriever", str(retriever_run), "--actions", str(tmp_path / "actions")
    )
    document = server.get("/openapi.json").json()
    validate(document)
    components = document["components"]["schemas"]
    assert set(components["RankBody"]["properties"]) == {"candidates", "context", "request_id"}
    assert "item_id" in json.dumps(components)  # the served model's own features
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    requests = re.findall(r"curl -s localhost:8080(/\S+) -d '([^']+)'", readme)
    assert {path for path, _ in requests} >= {"/v1/rank", "/v1/recommend", "/v1/feedback"}
    for path, body in requests:
        schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        jsonschema.validate(json.loads(body), _resolved(schema["schema"], components))
        assert server.post(path, content=body.encode()).status_code in (200, 202), (path, body)
    bad = {"user": {"user_id": 1}, "k": 0}
    rank_schema = _resolved({"$ref": "#/components/schemas/RecommendBody"}, components)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, rank_schema)
    r = server.post("/v1/recommend", json=bad)
    assert r.status_code == 422 and "$.k" in r.json()["error"]
    page = server.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "<script>" in page.text


def test_a_serving_flag_is_validated_like_its_config_key(trained_run):
    """`serve --max-batch-rows 0` used to be kept (an unvalidated model_copy) and stall the
    batcher; it is refused at start like `serving.max_batch_rows: 0` in a config."""
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "serve", str(trained_run), "--max-batch-rows", "0",
         "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "max_batch_rows" in done.stderr, done.stderr
