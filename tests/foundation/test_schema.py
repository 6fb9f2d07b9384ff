import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from streamrec.config import ConfigError, parse_config
from streamrec.fid import MISSING_FID, hash_bytes
from streamrec.schema import (
    DenseFeature,
    EmbeddingFeature,
    EncodingFeature,
    Label,
    Schema,
    SchemaError,
)


def _table() -> pa.Table:
    return pa.table(
        {
            "rating": [5.0, 3.0, 4.0, 1.0],
            "price": [0.0, 9.0, None, -3.0],
            "gender": ["M", "F", None, "X"],
            "genres": ["Action|Comedy", "Drama", None, "Comedy"],
            "user": [10, 11, None, 10],
            "city": ["paris", None, "rome", "paris"],
            "hist": pa.array([[1, 2, 3], [], None, [4]], pa.list_(pa.int64())),
            "hist_w": pa.array([[1.0, 0.5, 0.25], [], None, [2.0]], pa.list_(pa.float32())),
            "ts": [100, 200, 300, 400],
        }
    )


def test_labels_threshold_and_dense_transforms():
    s = Schema(
        labels=[Label(name="rating", threshold=4)],
        dense=[DenseFeature(name="price", transform="log1p", fill=-1.0, missing_indicator=True)],
    )
    b = s.encode(_table())
    assert b.labels[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    x = b.dense.numpy()
    assert x[:, 0].tolist() == pytest.approx([0.0, math.log(10), -1.0, -math.log(4)])
    assert x[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0]  # the missing indicator


def test_standardize_and_quantile_are_fitted():
    s = Schema(
        dense=[
            DenseFeature(name="price", transform="standardize"),
            DenseFeature(name="rating", transform="quantile", num_quantiles=4),
        ]
    )
    with pytest.raises(SchemaError, match="not fitted"):
        s.encode(_table(), with_labels=False)
    fitted = s.fit(_table())
    b = fitted.encode(_table(), with_labels=False)
    present = np.array([0.0, 9.0, -3.0])
    assert b.dense[0, 0].item() == pytest.approx((0 - present.mean()) / present.std(), rel=1e-5)
    assert b.dense[2, 0].item() == 0.0  # missing → fill
    q = b.dense[:, 1].numpy()
    assert q.min() == 0.0 and q.max() == 1.0 and (np.diff(q[[3, 1, 2, 0]]) > 0).all()


def test_encoding_vocabulary_oov_and_missing():
    s = Schema(
        encodings=[
            EncodingFeature(name="gender"),
            EncodingFeature(name="genres", separator="|", max_size=2),
        ]
    ).fit(_table())
    assert s.encodings[0].vocabulary == ["F", "M", "X"]
    assert s.encodings[1].vocabulary == ["Comedy", "Action"]
    b = s.encode(
        pa.table({"gender": ["M", "Z", None], "genres": ["Comedy|Drama", None, "Action"]}),
        with_labels=False,
    )
    d = b.dense.numpy()
    assert d[0, :4].tolist() == [0, 1, 0, 0] and d[1, :4].tolist() == [0, 0, 0, 1]
    assert d[2, :4].tolist() == [0, 0, 0, 0]  # missing: no bucket at all
    assert d[0, 4:].tolist() == [1, 0, 1]  # Comedy + OOV(Drama)
    assert s.dense_width == 7


def test_embedding_ids_strings_ints_lists_weights_and_missing():
    s = Schema(
        embeddings=[
            EmbeddingFeature(name="user"),
            EmbeddingFeature(name="city", missing="empty"),
            EmbeddingFeature(name="genres", separator="|", table="genre"),
            EmbeddingFeature(name="hist", weights="hist_w", table="item", max_length=2),
        ]
    )
    b = s.encode(_table(), with_labels=False)
    user = b.sparse["user"]
    assert user.values.tolist() == [10, 11, MISSING_FID, 10]
    city = b.sparse["city"]
    assert city.lengths().tolist() == [1, 0, 1, 1]
    assert city.values.tolist() == [hash_bytes("paris"), hash_bytes("rome"), hash_bytes("paris")]
    genres = b.sparse["genres"]
    assert genres.lengths().tolist() == [2, 1, 1, 1]
    assert genres.values[:2].tolist() == [hash_bytes("Action"), hash_bytes("Comedy")]
    hist = b.sparse["hist"]
    assert hist.values.tolist() == [2, 3, MISSING_FID, MISSING_FID, 4]
    assert hist.weights.tolist() == [0.5, 0.25, 1.0, 1.0, 2.0]
    assert s.tables() == {"user": ["user"], "city": ["city"], "genre": ["genres"], "item": ["hist"]}


def test_errors_name_the_column():
    s = Schema(labels=[Label(name="label")], dense=[DenseFeature(name="gender")])
    with pytest.raises(SchemaError, match="'label' is missing"):
        s.encode(_table())
    with pytest.raises(SchemaError, match="'gender' is not numeric"):
        s.encode(_table(), with_labels=False)
    with pytest.raises(ValueError, match="unique"):
        Schema(dense=[DenseFeature(name="a")], embeddings=[EmbeddingFeature(name="a")])


def test_config_round_trip_and_typos_are_errors():
    raw = {
        "schema": {"labels": [{"name": "label"}], "embeddings": [{"name": "user"}]},
        "tables": {"user": {"dim": 8, "optimizer": "adagrad"}},
    }
    cfg = parse_config(raw)
    assert cfg.table_configs()["user"].dim == 8
    again = parse_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="tables.user.dimm"):
        parse_config({**raw, "tables": {"user": {"dimm": 8}}})
    with pytest.raises(ConfigError, match="no feature uses"):
        parse_config({**raw, "tables": {"other": {}}})
    fitted = cfg.schema.fit(_table())
    assert isinstance(
        fitted.encode(_table(), with_labels=False).sparse["user"].values, torch.Tensor
    )


_scalar_ids = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=30).map(
        lambda v: pa.array(v, pa.int64())
    ),
    st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=30).map(
        lambda v: pa.array(v, pa.int32())
    ),
    st.lists(st.one_of(st.none(), st.booleans()), max_size=30).map(pa.array),
    st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=30).map(pa.array),
)


@given(_scalar_ids, st.integers(0, 3), st.sampled_from(["token", "empty"]))
def test_a_scalar_id_column_encodes_as_the_same_ids_given_as_one_element_lists(
    values, cut, missing
):
    """One id a row — any id type, nulls or not, in one chunk or several — encodes as the
    list path encodes [id] (a null: no id), so the scalar fast path cannot drift from it."""
    s = Schema(embeddings=[EmbeddingFeature(name="x", missing=missing)])
    at = min(cut, len(values))
    scalar = pa.Table.from_batches([
        pa.record_batch({"x": values.slice(0, at)}), pa.record_batch({"x": values.slice(at)})
    ]) if at else pa.table({"x": values})
    lists = pa.table({"x": pa.array(
        [None if v is None else [v] for v in values.to_pylist()], pa.list_(values.type)
    )})
    got = s.encode(scalar, with_labels=False).sparse["x"]
    expected = s.encode(lists, with_labels=False).sparse["x"]
    assert torch.equal(got.values, expected.values)
    assert torch.equal(got.offsets, expected.offsets)
