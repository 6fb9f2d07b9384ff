import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.data.loader import BatchLoader, shuffle_blocks
from streamrec.data.records import read_criteo
from streamrec.data.synthetic import SyntheticCriteo
from streamrec.schema import DenseFeature, EmbeddingFeature, Label, Schema

SCHEMA = Schema(
    labels=[Label(name="label")],
    dense=[DenseFeature(name=f"I{i}", transform="log1p") for i in range(1, 14)],
    embeddings=[EmbeddingFeature(name=f"C{i}") for i in range(1, 27)],
)


def test_loader_yields_fixed_size_batches_covering_every_row(criteo_train):
    loader = BatchLoader(lambda: read_criteo(criteo_train, chunk_bytes=100_000), SCHEMA, 1000)
    sizes = [len(b) for b in loader]
    assert sizes == [1000] * 7 + [200]
    assert (
        len(list(BatchLoader(lambda: read_criteo(criteo_train), SCHEMA, 1000, drop_last=True))) == 7
    )


def test_loader_reraises_errors_from_the_prefetch_thread():
    def broken():
        yield pa.record_batch({"label": [1, 0]})

    with pytest.raises(Exception, match="'I1' is missing"):
        list(BatchLoader(broken, SCHEMA, 2))


def test_synthetic_is_seeded_zipf_and_drifts():
    gen = SyntheticCriteo(seed=3, drift_per_row=0.05)
    a = pa.Table.from_batches(list(gen.record_batches(20_000, 5000)))
    b = pa.Table.from_batches(
        list(SyntheticCriteo(seed=3, drift_per_row=0.05).record_batches(20_000, 5000))
    )
    assert a.equals(b)
    c10 = a["C10"].to_numpy()
    _, counts = __import__("numpy").unique(c10[:5000], return_counts=True)
    assert counts.max() > 50 * counts.mean() / 10  # heavy head (Zipf), not uniform
    head_early = set(__import__("numpy").unique(c10[:2000]))
    head_late = set(__import__("numpy").unique(c10[-2000:]))
    assert len(head_early & head_late) < 0.9 * len(head_early)  # popularity moved
    batch = SCHEMA.encode(a.slice(0, 100))
    assert batch.dense.shape == (100, 13) and batch.sparse["C1"].values.numel() == 100


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    block=st.integers(1, 100),
    seed=st.integers(0, 2**16),
)
def test_shuffle_blocks_permutes_rows_within_blocks_reproducibly(sizes, block, seed):
    total = sum(sizes)
    starts = np.cumsum([0, *sizes[:-1]])
    batches = [
        pa.record_batch({"x": np.arange(s, s + n)}) for s, n in zip(starts, sizes, strict=True)
    ]
    out = np.concatenate([b["x"].to_numpy() for b in shuffle_blocks(iter(batches), block, seed)])
    assert sorted(out.tolist()) == list(range(total))  # every row once, none lost
    for lo in range(0, total, block):  # no row leaves its block
        assert sorted(out[lo : lo + block].tolist()) == list(range(lo, min(lo + block, total)))
    again = [b["x"].to_numpy() for b in shuffle_blocks(iter(batches), block, seed)]
    np.testing.assert_array_equal(np.concatenate(again), out)
    if total >= 20 and block >= total:  # a whole-data block really moves rows
        assert not np.array_equal(out, np.arange(total))
