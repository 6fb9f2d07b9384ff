"""The disk tier's store (embedding/storage): packed rows keyed by fid."""

import numpy as np

from streamrec.embedding.storage import RocksDBStore, row_dtype


def packed(n: int, seed: int, state_width: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, row_dtype(4, state_width))
    rows["weights"] = rng.normal(size=(n, 4))
    if state_width:
        rows["state"] = rng.random((n, state_width))
    rows["count"] = rng.integers(1, 100, n)
    rows["seen"] = rng.integers(0, 2**32 - 1, n, dtype=np.uint32)
    rows["version"] = rng.integers(0, 2**62, n)
    return rows


def test_get_returns_each_asked_row_in_the_asked_order(tmp_path):
    """Rows come back in the order asked (the store reads in key order), repeats and unknown
    fids included (count 0: not found), after writes given in random order."""
    store = RocksDBStore(tmp_path / "cold", 4, 1, expiry=False, fresh=True)
    try:
        fids = np.random.default_rng(0).permutation(np.arange(-500, 500, dtype=np.int64) * 7919)
        rows = packed(fids.size, 1)
        store.put(fids, rows)
        asked = np.concatenate([fids[::-3], fids[:5], np.array([1, 2, 3], np.int64)])
        found, got = store.get(asked)
        assert found.tolist() == [True] * (asked.size - 3) + [False] * 3
        position = {int(f): i for i, f in enumerate(fids)}
        expected = rows[[position[int(f)] for f in asked[:-3]]]
        assert got[:-3].tobytes() == expected.tobytes()
        assert (got[-3:]["count"] == 0).all()
    finally:
        store.close()
