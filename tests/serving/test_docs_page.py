"""GET /docs in a real browser: every operation of /openapi.json with its schema, an example
body the server answers, and a Send button — and the rule for a request that leaves model
inputs out (missing, counted, named in a header)."""

from __future__ import annotations

import html
import re

from tests.serving.conftest import browser_dom


def _result_of(dom: str, op: str) -> tuple[str, str]:
    """(data-status, text) of the result box of operation `op` ("post /v1/rank")."""
    block = dom[dom.index(f'id="{op}"'):]
    found = re.search(r'<pre class="(?:ok|bad)" data-status="(\w+)">(.*?)</pre>', block, re.S)
    assert found, block[:3000]
    return found.group(1), html.unescape(found.group(2))


def test_docs_sends_each_operations_example_and_shows_the_required_names(
    trained_run, retriever_run, start_server, chromium, tmp_path
):
    server = start_server(trained_run, "--retriever", str(retriever_run))
    for n, op in enumerate(("post /v1/rank", "post /v1/recommend", "get /v1/model")):
        dom = browser_dom(
            chromium, f"{server.url}/docs#send={op.replace(' ', '%20')}", tmp_path / f"p{n}"
        )
        status, text = _result_of(dom, op)
        assert status == "200", text
        assert '"model_version"' in text or '"versions"' in text or '"model"' in text
    # the request schemas show their `required` names as names, not character maps
    shown = html.unescape(dom)
    assert re.search(r'"required": \[\s*"candidates"\s*\]', shown), shown[:3000]
    assert '"0": "c"' not in shown
    document = server.get("/openapi.json").json()
    example = document["paths"]["/v1/rank"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    inputs = set(document["components"]["schemas"]["Context"]["properties"])
    assert "user_id" in example["context"] and "item_id" in example["candidates"][0]
    assert set(example["context"]) | set(example["candidates"][0]) == inputs  # all filled


def test_a_rank_request_missing_inputs_is_answered_counted_and_told(server):
    """The rule: a model input left out reads as missing (as an empty training cell); it is
    answered, counted per feature in /metrics, and named in X-Missing-Features."""
    full = {"context": {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician",
                        "zip_code": "85711"},
            "candidates": [{"item_id": 50, "genres": ["Drama"]}]}
    answered = server.post("/v1/rank", json=full)
    assert answered.status_code == 200 and "x-missing-features" not in answered.headers
    partial = server.post("/v1/rank", json={"context": {"user_id": 1},
                                            "candidates": [{"item_id": 50}, {"item_id": 1}]})
    assert partial.status_code == 200
    assert set(partial.headers["x-missing-features"].split(",")) == {
        "age", "gender", "occupation", "genres", "zip_code"}
    assert partial.json()["scores"]["label"] != answered.json()["scores"]["label"]
    metrics = server.get("/metrics").text
    for feature in ("age", "gender", "occupation", "genres"):
        line = f'streamrec_missing_feature_values_total{{feature="{feature}"}}'
        assert float(metrics.split(line)[1].split()[0]) >= 2, feature
    assert 'feature="user_id"' not in metrics.split("streamrec_missing_feature_values")[1][:2000]
