"""ItemEncodings: a cascade request's rows assembled from cached item encodings, the context
encoded once and per-request columns — the very Batch `Schema.encode` builds from the rows."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.batch import Batch
from streamrec.models.request_sharing import always_split
from streamrec.schema import DenseFeature, EmbeddingFeature, EncodingFeature, Schema
from streamrec.serving.item_encoding import ItemEncodings
from streamrec.serving.request import RequestError, rows_table

KINDS = {
    "price": "float",
    "retrieval_score": "float",
    "age": "float",
    "gender": "string",
    "genres": "string",
    "user_id": "int",
    "item_id": "int",
    "tags": "list<int>",
    "tags_w": "list<float>",
}
CONTEXT = ["age", "gender", "user_id"]
CANDIDATE = ["price", "retrieval_score", "genres", "item_id", "tags", "tags_w"]


def _schema() -> Schema:
    sample = pa.table({
        "price": [1.0, 5.0, 9.0], "age": [20.0, 30.0, 40.0], "retrieval_score": [0.1, 0.2, 0.3],
        "gender": ["M", "F", "X"], "genres": ["a|b", "c", "a"],
        "user_id": [1, 2, 3], "item_id": [4, 5, 6], "tags": [[1], [2, 3], []],
        "tags_w": [[1.0], [1.0, 2.0], []],
    })
    return Schema(
        dense=[
            DenseFeature(name="price", transform="log1p", missing_indicator=True),
            DenseFeature(name="retrieval_score"),
            DenseFeature(name="age", transform="standardize", fill=-1.0),
        ],
        encodings=[
            EncodingFeature(name="gender", kind="string"),
            EncodingFeature(name="genres", kind="string", separator="|"),
        ],
        embeddings=[
            EmbeddingFeature(name="user_id", kind="int"),
            EmbeddingFeature(name="item_id", kind="int"),
            EmbeddingFeature(name="tags", kind="list<int>", weights="tags_w"),
        ],
    ).fit(sample)


class _Catalog:
    def __init__(self, rows: dict[int, dict[str, Any]]) -> None:
        self.rows = rows
        self.catalog_version = 0
        self.reads = 0

    def catalog_rows(self, items: list[int]) -> list[dict[str, Any]]:
        self.reads += len(items)
        return [self.rows[i] for i in items]


def _assert_same(got: Batch, want: Batch) -> None:
    assert torch.equal(got.dense, want.dense)
    assert got.sparse.keys() == want.sparse.keys()
    for name, ids in want.sparse.items():
        assert torch.equal(got.sparse[name].values, ids.values), name
        assert torch.equal(got.sparse[name].offsets, ids.offsets), name
        if ids.weights is None:
            assert got.sparse[name].weights is None
        else:
            assert torch.equal(got.sparse[name].weights, ids.weights), name


item_rows = st.fixed_dictionaries(
    {},
    optional={
        "price": st.floats(0, 1e6) | st.none(),
        "genres": st.sampled_from(["a", "b|c", "a|zz", ""]) | st.none(),
        "tags": st.lists(st.integers(0, 50), max_size=3),
    },
)


@settings(max_examples=60, deadline=None)
@given(
    catalog=st.dictionaries(st.integers(1, 10**12), item_rows, min_size=1, max_size=12),
    picks=st.lists(st.integers(0, 100), min_size=1, max_size=30),
    context=st.fixed_dictionaries(
        {}, optional={"age": st.floats(0, 90), "gender": st.sampled_from(["M", "F", "?"]),
                      "user_id": st.integers(0, 10**9) | st.none()},
    ),
    with_scores=st.booleans(),
)
def test_the_assembled_batch_is_the_encoded_rows(catalog, picks, context, with_scores):
    for row in catalog.values():  # weights go with the tags, one each
        if "tags" in row:
            row["tags_w"] = [0.5 + i for i in range(len(row["tags"]))]
    schema = _schema()
    ids = sorted(catalog)
    items = np.array([ids[p % len(ids)] for p in picks], np.int64)  # repeats included
    scores = np.linspace(-1, 1, len(items)) if with_scores else None
    encodings = ItemEncodings(schema, KINDS, CONTEXT, CANDIDATE, per_request=("retrieval_score",))
    source = _Catalog(catalog)
    got = encodings.batch(context, items, source, {"retrieval_score": scores})
    rows = [{f: catalog[int(i)][f] for f in CANDIDATE if f in catalog[int(i)]} for i in items]
    if scores is not None:
        for row, s in zip(rows, scores.tolist(), strict=True):
            row["retrieval_score"] = s
    want = schema.encode(rows_table(context, rows, KINDS), with_labels=False)
    _assert_same(got, want)
    # its request context: the context's features, once — what the server's row path makes
    # (a row more: a one-row request would not be worth a context)
    more = Batch.concat([want, want.slice(0, 1)])
    expected = schema.share_requests(more, [len(items) + 1], CONTEXT).context
    assert got.context is not None and expected is not None
    assert got.context.features == expected.features
    assert torch.equal(got.context.index, torch.zeros(len(items), dtype=torch.int64))
    assert torch.equal(got.context.dense_columns, expected.dense_columns)
    assert torch.equal(got.context.dense, expected.dense[:1])
    assert source.reads == len(set(items.tolist()))  # each item encoded once
    again = encodings.batch(context, items[::-1].copy(), source, {"retrieval_score": scores})
    assert source.reads == len(set(items.tolist()))  # … and never again
    want = schema.encode(rows_table(context, rows[::-1], KINDS), with_labels=False)
    if scores is None:
        _assert_same(again, want)
    # another user, some values the same: a context not seen before is encoded, not confused
    other = {**context, "user_id": 123_456_789, "gender": "F" if context.get("gender") else None}
    mixed = encodings.batch(other, items, source, {"retrieval_score": scores})
    _assert_same(mixed, schema.encode(rows_table(other, rows, KINDS), with_labels=False))


def test_a_changed_catalog_is_encoded_afresh_and_bad_context_is_a_422():
    schema = _schema()
    catalog = _Catalog({7: {"price": 1.0, "genres": "a"}, 8: {"price": 2.0}})
    encodings = ItemEncodings(schema, KINDS, CONTEXT, CANDIDATE, per_request=("retrieval_score",))
    before = encodings.batch({}, np.array([7, 8]), catalog)
    catalog.rows[7] = {"price": 100.0, "genres": "b"}
    catalog.catalog_version += 1
    after = encodings.batch({}, np.array([7, 8]), catalog)
    assert not torch.equal(before.dense[0], after.dense[0])
    assert torch.equal(before.dense[1], after.dense[1])
    with pytest.raises(RequestError, match="does not fit"):
        encodings.batch({"user_id": "not a number"}, np.array([7]), catalog)
    with pytest.raises(KeyError):
        encodings.batch({}, np.array([9]), catalog)
    with pytest.raises(ValueError, match="dense"):
        ItemEncodings(schema, KINDS, CONTEXT, CANDIDATE, per_request=("genres",))


def test_a_new_context_encodes_only_the_values_not_met_before():
    """A new user with an age and gender met before: only their id goes through Arrow, and the
    rows are those of the whole context encoded afresh; a wrong type among the new values is
    still a 422."""
    schema = _schema()
    catalog = _Catalog({7: {"price": 1.0, "genres": "a"}, 8: {"price": 2.0}})
    encodings = ItemEncodings(schema, KINDS, CONTEXT, CANDIDATE)
    encoded: list[set[str]] = []
    real = schema.encode_features

    def spy(data, names):
        encoded.append(set(names))
        return real(data, names)

    object.__setattr__(schema, "encode_features", spy)
    items = np.array([7, 8])
    first = {"user_id": 1, "age": 33.0, "gender": "F"}
    encodings.batch(first, items, catalog)
    second = {"user_id": 2, "age": 33.0, "gender": "F"}
    got = encodings.batch(second, items, catalog)
    assert encoded == [{"user_id", "age", "gender"}, {"user_id"}]
    rows = [catalog.rows[7], catalog.rows[8]]
    _assert_same(got, schema.encode(rows_table(second, rows, KINDS), with_labels=False))
    no_age = encodings.batch({"user_id": 2, "gender": "F"}, items, catalog)  # age missing
    _assert_same(no_age, schema.encode(
        rows_table({"user_id": 2, "gender": "F"}, rows, KINDS), with_labels=False
    ))
    assert encoded[-1] == {"age"}
    with pytest.raises(RequestError, match="does not fit"):
        encodings.batch({"user_id": "three", "age": 33.0, "gender": "F"}, items, catalog)


def test_real_models_score_the_cached_encodings_as_they_score_the_rows(
    trained_run, retriever_run, preranker_run
):
    """The MovieLens ranker and COLD pre-ranker over the retriever's catalog (list-valued
    genres, ids, the retrieval score): the same scores from both paths — to the bit without
    the request context, to float32 rounding with it (the ranker's first layer then sums
    the user's columns once per request, in another order)."""
    from streamrec.retrieval.impression_set import RETRIEVAL_SCORE
    from streamrec.serving.retrieval_stage import RecommendRequest, RetrievalStage
    from streamrec.serving.snapshot import Snapshot

    stage = RetrievalStage.load(retriever_run)
    user = {"user_id": 5, "age": 33, "gender": "F", "occupation": "other"}
    wanted = RecommendRequest({f: v for f, v in user.items() if f in stage.kinds}, 300, set())
    items, found = stage.retrieve(wanted)
    scores = np.asarray(found, np.float64)
    for model in (trained_run, preranker_run):
        snap = Snapshot.load(model)
        context = {f: v for f, v in user.items() if f in snap.context_features}
        encodings = ItemEncodings(
            snap.schema, snap.kinds, snap.context_features, snap.candidate_features,
            per_request=(RETRIEVAL_SCORE,),
        )
        batch = encodings.batch(context, np.asarray(items), stage, {RETRIEVAL_SCORE: scores})
        assert batch.context is not None
        ids = {f.name for f in snap.schema.embeddings}
        assert batch.context.features == ids & set(snap.context_features)
        assert "user_id" in batch.context.features
        with always_split():
            shared = snap.predict_batch(batch)
        unshared = snap.predict_batch(dataclasses.replace(batch, context=None))
        by_item = dict(zip(items, scores.tolist(), strict=True))
        rows = stage.item_rows(items, snap.candidate_features, by_item)
        want = snap.predict(rows_table(context, rows, snap.kinds))
        np.testing.assert_array_equal(unshared, want)
        np.testing.assert_allclose(shared, want, rtol=0, atol=1e-6)


def test_the_batcher_scores_encoded_rows_beside_row_requests_and_re_encodes_after_a_swap(
    trained_run, retriever_run
):
    """One inference batch of [rows, encoded rows, rows]: each request gets its own scores,
    as if scored alone; encoded rows made for a model swapped out since are encoded afresh
    from `as_rows` (a new model may read its inputs differently)."""
    from streamrec.serving.batcher import DynamicBatcher, EncodedRows, _Pending
    from streamrec.serving.request import CandidateRows
    from streamrec.serving.retrieval_stage import RetrievalStage
    from streamrec.serving.snapshot import Snapshot

    stage = RetrievalStage.load(retriever_run)
    old, new = Snapshot.load(trained_run), Snapshot.load(trained_run)
    items = sorted(stage.catalog)[:40]
    context = {"user_id": 5, "age": 33, "gender": "F", "occupation": "other"}

    def rows_for(snap, some):
        ctx = {f: v for f, v in context.items() if f in snap.context_features}
        return CandidateRows.from_dicts(
            ctx, stage.item_rows(some, snap.candidate_features), snap.kinds
        )

    def encoded_for(snap, some, calls):
        encodings = ItemEncodings(snap.schema, snap.kinds, snap.context_features,
                                  snap.candidate_features)
        ctx = {f: v for f, v in context.items() if f in snap.context_features}

        def as_rows():
            calls.append(1)
            return rows_for(new, some)

        return EncodedRows(encodings.batch(ctx, np.array(some), stage), snap, as_rows)

    batcher = DynamicBatcher(new)
    for encoded_with, re_encoded in ((new, 0), (old, 1)):
        calls: list[int] = []
        parts = [rows_for(new, items[:10]), encoded_for(encoded_with, items[10:30], calls),
                 rows_for(new, items[30:])]
        outcomes = batcher._predict([_Pending(p, None, None, 0.0) for p in parts])
        alone = [new.predict(rows_for(new, some).table(new.kinds))
                 for some in (items[:10], items[10:30], items[30:])]
        for (scores, error), want in zip(outcomes, alone, strict=True):
            assert error is None
            np.testing.assert_allclose(scores, want, rtol=0, atol=1e-6)
        assert len(calls) == re_encoded
