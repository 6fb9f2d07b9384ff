import numpy as np
import pyarrow as pa
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from streamrec.fid import MISSING_FID, fids_from_arrow, hash_bytes, hash_string_array


def _reference(values: list[str]) -> np.ndarray:
    return np.array(
        [np.uint64(xxhash.xxh64_intdigest(v.encode())).view(np.int64) for v in values], np.int64
    )


@given(st.lists(st.text(max_size=80), min_size=1, max_size=50))
def test_string_hash_matches_reference_xxh64(values):
    assert np.array_equal(hash_string_array(pa.array(values)), _reference(values))


@given(st.lists(st.text(max_size=40), min_size=3, max_size=30), st.integers(0, 2))
def test_hash_respects_arrow_slice_offsets(values, start):
    arr = pa.array(values).slice(start)
    assert np.array_equal(hash_string_array(arr), _reference(values[start:]))


def test_large_string_and_dictionary_arrays():
    values = ["a", "bb", "68fd1e64"]
    ref = _reference(values)
    assert np.array_equal(hash_string_array(pa.array(values, pa.large_string())), ref)
    assert np.array_equal(hash_string_array(pa.array(values).dictionary_encode()), ref)


def test_integer_ids_are_used_as_they_are():
    ids = pa.array([0, 5, -3, 2**62], pa.int64())
    assert fids_from_arrow(ids).tolist() == [0, 5, -3, 2**62]
    assert fids_from_arrow(pa.array([1.0, 7.0])).tolist() == [1, 7]


def test_single_value_hash_and_missing_fid_are_stable():
    assert hash_bytes("68fd1e64") == int(_reference(["68fd1e64"])[0])
    assert MISSING_FID == hash_bytes(b"\x00streamrec:missing")
    assert MISSING_FID not in _reference(["", "missing", "<missing>"]).tolist()
