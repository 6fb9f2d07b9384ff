"""Raw feature value → 64-bit feature id (fid).

Integer ids are used as they are; strings are hashed with xxHash64 (seed 0) and the unsigned
result is reinterpreted as int64. There is no modulo into a fixed table, so two distinct strings
share a fid only on a 64-bit hash collision (~n²/2⁶⁵ pairs: about 3e-8 for a billion ids).

The hash runs in numba over Arrow's string buffers (offsets + bytes), so a column of a million
strings is hashed without one Python call per value. `tests/foundation/test_fid.py` checks it
against the reference `xxhash` package.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)
_U0 = np.uint64(0)


@numba.njit(inline="always")
def _rotl(x: np.uint64, r: np.uint64) -> np.uint64:
    return (x << r) | (x >> (np.uint64(64) - r))


@numba.njit(inline="always")
def _read_le(data: np.ndarray, i: int, nbytes: int) -> np.uint64:
    """The `nbytes` bytes at data[i:] as a little-endian unsigned integer."""
    v = np.uint64(0)
    for k in range(nbytes):
        v |= np.uint64(data[i + k]) << np.uint64(8 * k)
    return v


@numba.njit(inline="always")
def avalanche(
    h: np.uint64, s1: int, m1: np.uint64, s2: int, m2: np.uint64, s3: int
) -> np.uint64:
    """h ^= h >> s1; h *= m1; h ^= h >> s2; h *= m2; h ^= h >> s3 — the finaliser of both
    xxHash64 (strings → fids) and splitmix64 (fids → hash-map slots, owners, sketches)."""
    h ^= h >> np.uint64(s1)
    h *= m1
    h ^= h >> np.uint64(s2)
    h *= m2
    h ^= h >> np.uint64(s3)
    return h


@numba.njit(inline="always")
def _round(acc: np.uint64, lane: np.uint64) -> np.uint64:
    acc = acc + lane * _P2
    acc = _rotl(acc, np.uint64(31))
    return acc * _P1


@numba.njit(inline="always")
def _merge(acc: np.uint64, v: np.uint64) -> np.uint64:
    acc ^= _round(_U0, v)
    return acc * _P1 + _P4


@numba.njit
def _xxh64(data: np.ndarray, start: int, end: int, seed: np.uint64) -> np.uint64:
    n = end - start
    i = start
    if n >= 32:
        v1 = seed + _P1 + _P2
        v2 = seed + _P2
        v3 = seed
        v4 = seed - _P1
        limit = end - 32
        while i <= limit:
            v1 = _round(v1, _read_le(data, i, 8))
            v2 = _round(v2, _read_le(data, i + 8, 8))
            v3 = _round(v3, _read_le(data, i + 16, 8))
            v4 = _round(v4, _read_le(data, i + 24, 8))
            i += 32
        h = (
            _rotl(v1, np.uint64(1))
            + _rotl(v2, np.uint64(7))
            + _rotl(v3, np.uint64(12))
            + _rotl(v4, np.uint64(18))
        )
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + _P5
    h += np.uint64(n)
    while i + 8 <= end:
        h ^= _round(_U0, _read_le(data, i, 8))
        h = _rotl(h, np.uint64(27)) * _P1 + _P4
        i += 8
    if i + 4 <= end:
        h ^= _read_le(data, i, 4) * _P1
        h = _rotl(h, np.uint64(23)) * _P2 + _P3
        i += 4
    while i < end:
        h ^= np.uint64(data[i]) * _P5
        h = _rotl(h, np.uint64(11)) * _P1
        i += 1
    return avalanche(h, 33, _P2, 29, _P3, 32)


@numba.njit(nogil=True, cache=True)
def _hash_strings(offsets: np.ndarray, data: np.ndarray, seed: np.uint64) -> np.ndarray:
    n = offsets.shape[0] - 1
    out = np.empty(n, dtype=np.uint64)
    for j in range(n):
        out[j] = _xxh64(data, offsets[j], offsets[j + 1], seed)
    return out


def hash_bytes(value: bytes | str, seed: int = 0) -> int:
    """xxHash64 of one value as a signed int64 fid (for tests, configs and single lookups)."""
    if isinstance(value, str):
        value = value.encode()
    return int(np.uint64(xxhash.xxh64_intdigest(value, seed)).view(np.int64))


MISSING_FID: int = hash_bytes(b"\x00streamrec:missing")
"""The fid a missing sparse value maps to when its feature declares `missing: token`."""


def hash_string_array(arr: pa.Array, seed: int = 0) -> np.ndarray:
    """Hash every value of an Arrow string/binary array → int64 fids [n]. Nulls hash as ''."""
    if isinstance(arr, pa.ChunkedArray):
        parts = [hash_string_array(c, seed) for c in arr.chunks]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (
        pa.types.is_string(arr.type)
        or pa.types.is_large_string(arr.type)
        or pa.types.is_binary(arr.type)
        or pa.types.is_large_binary(arr.type)
    ):
        arr = pc.cast(arr, pa.string())
    wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, off_buf, data_buf = arr.buffers()
    off_dtype = np.int64 if wide else np.int32
    offsets = np.frombuffer(off_buf, dtype=off_dtype)[arr.offset : arr.offset + len(arr) + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    return _hash_strings(offsets, data, np.uint64(seed)).view(np.int64)


def fids_from_arrow(arr: pa.Array) -> np.ndarray:
    """Map a flat Arrow array of raw values → int64 fids [n] (nulls are handled by the caller).

    Integers (and integral floats, which CSV readers produce for id columns) are used as they
    are; strings and binaries are hashed; booleans become 0/1.
    """
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if t != pa.int64():
            arr = arr.cast(pa.int64())
        if arr.null_count:
            arr = pc.fill_null(arr, 0)
        return np.array(arr.to_numpy(zero_copy_only=False))
    if pa.types.is_floating(t):
        values = np.asarray(pc.fill_null(arr, 0).to_numpy(zero_copy_only=False))
        if not np.all(np.floor(values) == values):
            raise TypeError("a float column cannot be an id column unless its values are whole")
        return values.astype(np.int64)
    return hash_string_array(arr)
