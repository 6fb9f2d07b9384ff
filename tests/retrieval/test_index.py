import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamrec.retrieval import index
from streamrec.retrieval.evaluate import ranking_metrics
from streamrec.retrieval.index import (
    INDEX_TYPES,
    IndexParams,
    Retriever,
    first_kept,
    recall_against_exact,
)


def _data(n=3000, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return np.arange(100, 100 + n, dtype=np.int64), x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("kind", "hnsw_path"), [(kind, "graph") for kind in INDEX_TYPES] + [("hnsw", "scan")]
)
def test_every_index_type_searches_adds_removes_and_round_trips(kind, hnsw_path, monkeypatch):
    """hnsw_path: HNSW's graph walk (a scan never cheaper) or its exact scan (always)."""
    monkeypatch.setattr(index, "SCAN_MACS_PER_VISIT", 0 if hnsw_path == "graph" else 10**9)
    ids, x = _data()
    r = Retriever(16, IndexParams(index_type=kind, nlist=32, nprobe=8, pq_m=4))
    r.build(ids, x)
    found, scores = r.search(x[:5], 10)
    assert found.shape == (5, 10) and len(set(found[0])) == 10
    assert (np.diff(scores[0]) <= 1e-5).all()  # best first
    if kind in ("flat", "hnsw", "sq8"):
        assert found[0, 0] == ids[0]  # a vector finds itself
    assert recall_against_exact(r, ids, x, x[:50], 10) > (0.99 if kind == "flat" else 0.5)
    r.remove(ids[:1])
    assert ids[0] not in r.search(x[:1], 10)[0][0]
    new = x[1:2] * 1.0
    r.add(np.array([7]), new)
    assert 7 in r.search(new, 5)[0][0]
    excluded = r.search(x[2:3], 10, exclude=[{int(ids[2])}])[0][0]
    assert ids[2] not in excluded
    clone = Retriever.from_bytes(r.to_bytes(), 16, r.params, r.tombstones)
    assert np.array_equal(clone.search(x[:3], 10)[0], r.search(x[:3], 10)[0])


def test_bad_kind_and_metrics():
    with pytest.raises(ValueError, match="index type"):
        Retriever(8, IndexParams(index_type="lsh"))
    m = ranking_metrics({1: [5, 6, 7], 2: [9]}, {1: {6, 100}, 2: {9}}, ks=(1, 3))
    assert m["recall@1"] == pytest.approx((0 + 1) / 2)
    assert m["recall@3"] == pytest.approx((0.5 + 1) / 2)
    ndcg_user1 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_user1 + 1) / 2)


@given(
    st.lists(st.integers(-1, 30), max_size=60),
    st.sets(st.integers(0, 30), max_size=10),
    st.integers(1, 40),
)
def test_search_keeps_the_first_k_new_allowed_ids_in_order(found, skip, k):
    """The vectorised filter over a search's ids against the loop it replaced: −1 dropped,
    skipped (seen, removed) ids dropped, a repeated id kept where first met, at most k."""
    want, met = [], set()
    for position, i in enumerate(found):
        if i >= 0 and i not in skip and i not in met:
            met.add(i)
            want.append(position)
            if len(want) == k:
                break
    assert first_kept(np.array(found, np.int64), skip, k).tolist() == want


def test_an_hnsw_scan_is_the_exact_search_and_a_narrow_search_keeps_the_graph(monkeypatch):
    """A search asking for most of a small catalog scans every vector: the flat index's
    answer, ids and scores; a replaced item's best vector counts once, a removed one never.
    A narrow search of a large catalog walks the graph."""
    ids, x = _data(n=3000)
    hnsw, flat = (Retriever(16, IndexParams(index_type=t)) for t in ("hnsw", "flat"))
    hnsw.build(ids, x)
    flat.build(ids, x)
    scans = []
    scan = Retriever._scan
    monkeypatch.setattr(Retriever, "_scan", lambda self, q, n: scans.append(n) or scan(self, q, n))
    got, got_scores = hnsw.search(x[:4], 1000)
    want, want_scores = flat.search(x[:4], 1000)
    assert scans == [1000]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)

    hnsw.add(ids[5:6], -x[5:6])  # item 105 now points away; its old vector stays stored
    hnsw.remove(ids[7:8])
    found, _ = hnsw.search(x[5:6], 3000)
    assert (found[0] >= 0).sum() == 2999  # each live id once: 105 once, 107 never
    assert found[0, 0] == ids[5] and ids[7] not in found[0]

    monkeypatch.setattr(index, "SCAN_MACS_PER_VISIT", 1)  # the graph is cheaper for 10
    hnsw.search(x[:1], 10)
    assert scans == [1000, 3001]  # 3,000 asked + 1 tombstone, of 3,001 stored vectors
