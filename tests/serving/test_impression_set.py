"""The ranker's impression-shaped training set: every row is a candidate the server's own
retrieval stage would return for that user's past, labelled by the user's future — and the
`streamrec impressions` command that writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.retrieval.impression_set import RETRIEVAL_SCORE, _pairs_in, impression_set
from streamrec.retrieval.model_dir import find_retrieval_dir, load_retrieval_model
from streamrec.serving.retrieval_stage import RecommendRequest, RetrievalStage

REPO = Path(__file__).resolve().parents[2]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(-(2**40), 2**40)), max_size=40),
    st.lists(st.tuples(st.integers(0, 5), st.integers(-(2**40), 2**40)), max_size=40),
)
def test_pairs_in_is_set_membership_of_pairs(asked, known):
    users = np.array([u for u, _ in asked], np.int64)
    items = np.array([i for _, i in asked], np.int64)
    in_users = np.array([u for u, _ in known], np.int64)
    in_items = np.array([i for _, i in known], np.int64)
    got = _pairs_in(users, items, in_users, in_items)
    assert got.tolist() == [pair in set(known) for pair in asked]


def test_rows_are_the_servers_candidates_labelled_by_the_future(retriever_run, ml100k):
    loaded = load_retrieval_model(find_retrieval_dir(retriever_run))
    log = ml100k.slice(0, 20_000)  # ~ the first few hundred users' interactions
    table = impression_set(loaded, log, 50, ["user_id", "age", "gender", "zip_code"])
    assert "zip_code" not in table.column_names  # a /v1/recommend body cannot carry it
    rows = table.to_pylist()
    by_user: dict[int, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    events = log.sort_by([("user_id", "ascending"), ("timestamp", "ascending")]).to_pylist()
    history: dict[int, list[dict]] = {}
    for e in events:
        history.setdefault(e["user_id"], []).append(e)
    stage = RetrievalStage.load(retriever_run)
    checked = 0
    for user, candidates in list(by_user.items())[:25]:
        past_events = history[user][: max(1, int(len(history[user]) * 0.8))]
        past = {e["item_id"] for e in past_events}
        future = {e["item_id"] for e in history[user][len(past_events):]}
        assert len(candidates) == 50
        assert not {c["item_id"] for c in candidates} & past
        assert [c["label"] for c in candidates] == [int(c["item_id"] in future)
                                                    for c in candidates]
        assert {c["age"] for c in candidates} == {past_events[-1]["age"]}
        query = {f: past_events[-1][f] for f in ("user_id", "age", "gender", "occupation")}
        query["history"] = [e["item_id"] for e in past_events][-50:]
        items, scores = stage.retrieve(RecommendRequest(query, 50, past), 50)
        ours = [c[RETRIEVAL_SCORE] for c in candidates]
        np.testing.assert_allclose(  # the server's scores, rank by rank (one query vs a
            ours, scores, rtol=1e-4, atol=1e-5  # batch: float noise) …
        )
        served = dict(zip(items, scores, strict=True))
        for c, item, score in zip(candidates, items, scores, strict=True):
            if c["item_id"] != item:  # … and its order, but for items the noise may swap:
                near = served.get(c["item_id"], float(scores[-1]))  # (or swap in at the cut)
                assert abs(near - score) <= 1e-5 + 1e-4 * abs(score), (c["item_id"], item)
        checked += 1
    assert checked == 25
    assert 0 < sum(r["label"] for r in rows) < len(rows)


def test_the_command_writes_a_parquet_file_and_reports_it(retriever_run, ml100k, tmp_path):
    out = tmp_path / "impressions.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "impressions", str(retriever_run),
         str(REPO / "examples" / "ml100k_deepfm.yaml"), "--out", str(out),
         "--candidates", "20", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    table = pq.read_table(out)
    assert report["rows"] == table.num_rows == 20 * report["users"]
    assert report["positives"] == pa.compute.sum(table["label"]).as_py() > 0
    assert {"user_id", "item_id", "genres", RETRIEVAL_SCORE, "label"} <= set(table.column_names)
    missing = subprocess.run(
        [sys.executable, "-m", "streamrec", "impressions", str(tmp_path),
         str(REPO / "examples" / "ml100k_deepfm.yaml"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "no retrieval model" in missing.stderr
