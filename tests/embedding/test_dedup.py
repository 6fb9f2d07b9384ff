import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding.dedup import dedup

INT64 = st.integers(-(2**63), 2**63 - 1)
# Structured ids that defeat weak hashes: one bit pattern shifted to every position, small
# counters under a feature prefix (Criteo-like), and plain random 64-bit values.
STRUCTURED = st.one_of(
    st.builds(
        lambda k, s: np.int64(np.uint64(k) << np.uint64(s)), st.integers(0, 255), st.integers(0, 56)
    ),
    st.builds(lambda slot, k: (slot << 48) | k, st.integers(0, 100), st.integers(0, 5000)),
    INT64,
)


def _reference(fids: list[int]) -> tuple[list[int], list[int]]:
    order: dict[int, int] = {}
    counts: list[int] = []
    for f in fids:
        if f not in order:
            order[f] = len(order)
            counts.append(0)
        counts[order[f]] += 1
    return list(order), counts


def test_dedup_is_first_occurrence_ordered_and_inverse_reconstructs():
    fids = np.array([5, -1, 5, 2**62, -1, 7], np.int64)
    unique, inverse, counts = dedup(fids)
    assert unique.tolist() == [5, -1, 2**62, 7] and counts.tolist() == [2, 2, 1, 1]
    assert np.array_equal(unique[inverse], fids)


@settings(max_examples=300, deadline=None)
@given(st.lists(STRUCTURED, max_size=3000), st.randoms(use_true_random=False))
def test_dedup_matches_a_dict(fids, rnd):
    # repeat some ids so every example has duplicates as well as distinct ids
    fids = fids + [rnd.choice(fids) for _ in range(len(fids) // 2)] if fids else fids
    arr = np.array(fids, np.int64)
    unique, inverse, counts = dedup(arr)
    want_unique, want_counts = _reference([int(f) for f in arr])
    assert unique.tolist() == want_unique
    assert counts.tolist() == want_counts
    assert np.array_equal(unique[inverse], arr)


def test_dedup_of_many_shifted_ids_stays_exact():
    # 2^16 ids that differ only above bit 40: their low bits are all zero
    fids = np.repeat(np.arange(1 << 16, dtype=np.int64) << 40, 2)
    unique, inverse, counts = dedup(fids)
    assert unique.shape[0] == 1 << 16 and (counts == 2).all()
    assert np.array_equal(unique[inverse], fids)
