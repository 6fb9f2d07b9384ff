"""Row storage that grows without copying: fixed-size chunks of rows, addressed by row index.

Row r lives in chunk r >> shift at offset r & mask. The first chunk starts small and doubles
(copying at most one chunk) until it reaches `chunk_rows`; after that growth appends a new chunk
and never moves existing rows, so a table can pass 10M rows without a long pause. Kernels see
the chunks through `ptrs`, an int64 array of their addresses (see `views.py`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from streamrec.embedding.views import address, storage_moved, voidptr

DEFAULT_CHUNK_ROWS = 1 << 16
_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.uint32): torch.uint32,
    np.dtype(np.uint16): torch.uint16,  # quantised weights' codes (quantized_rows.py)
    np.dtype(np.uint8): torch.uint8,
}


class ChunkedRows:
    """A growable [capacity, width] array of `dtype` in chunks (see module docstring)."""

    def __init__(
        self,
        width: int,
        dtype: type = np.float32,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        initial_rows: int = 64,
        fill: float | int = 0,
    ) -> None:
        if chunk_rows & (chunk_rows - 1):
            raise ValueError("chunk_rows must be a power of two")
        if np.dtype(dtype) not in _TORCH_DTYPES:
            raise ValueError(
                f"rows of {np.dtype(dtype)} are not supported; use one of {list(_TORCH_DTYPES)}"
            )
        self.width = width
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.shift = chunk_rows.bit_length() - 1
        self.mask = chunk_rows - 1
        self.fill = fill
        first = min(chunk_rows, max(16, 1 << (max(initial_rows, 1) - 1).bit_length()))
        # Width-0 rows (SGD has no state) still get one column so every chunk has an address.
        self._stored_width = max(width, 1)
        self.chunks = [self._new_chunk(first)]
        self.ptrs = np.array([address(self.chunks[0])], np.int64)
        storage_moved()

    def _new_chunk(self, rows: int) -> np.ndarray:
        # np.zeros takes pages the OS zeroes lazily (calloc): no long memset under the GIL
        # when a large table is allocated while the server is answering requests.
        if self.fill == 0:
            return np.zeros((rows, self._stored_width), self.dtype)
        return np.full((rows, self._stored_width), self.fill, self.dtype)

    @property
    def capacity(self) -> int:
        if len(self.chunks) == 1:
            return self.chunks[0].shape[0]
        return len(self.chunks) * self.chunk_rows

    def reserve(self, rows: int) -> None:
        """Make room for row indices < rows (doubling the first chunk, then whole chunks)."""
        if self.capacity >= rows:
            return
        while self.capacity < rows:
            first = self.chunks[0]
            if len(self.chunks) == 1 and first.shape[0] < self.chunk_rows:
                grown = self._new_chunk(min(first.shape[0] * 2, self.chunk_rows))
                grown[: first.shape[0]] = first
                self.chunks[0] = grown
            else:
                self.chunks.append(self._new_chunk(self.chunk_rows))
        self.ptrs = np.array([address(c) for c in self.chunks], np.int64)
        storage_moved()

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks) if self.width else 0

    def gather(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """out[i] = row rows[i]; a negative row reads zeros. → [len(rows), width]."""
        if out is None:  # torch's allocator reuses memory: no fresh page faults per call
            out = torch.empty((rows.shape[0], self.width), dtype=_TORCH_DTYPES[self.dtype]).numpy()
        if self.width == 0:
            return out
        _gather(self.ptrs, self.shift, self.mask, self._stored_width, rows, out)
        return out

    def scatter(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Row rows[i] = values[i] (rows distinct and non-negative)."""
        if self.width == 0 or rows.shape[0] == 0:
            return
        values = np.ascontiguousarray(values, self.dtype).reshape(rows.shape[0], self.width)
        _scatter(self.ptrs, self.shift, self.mask, self._stored_width, rows, values)

    def to_array(self, n: int) -> np.ndarray:
        """The first n rows as one [n, width] array (a copy)."""
        whole = np.concatenate(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        return whole[:n, : self.width].copy()

    def pieces(self, n: int):
        """The first n rows as successive views [k, width] of the chunks (no copy)."""
        left = n
        for chunk in self.chunks:
            if left <= 0:
                return
            k = min(left, chunk.shape[0])
            yield chunk[:k, : self.width]
            left -= k

    def load_rows(self, read, n: int) -> None:
        """Replace the first n rows, chunk by chunk, with `read(lo, hi)` → [hi − lo, width]:
        a large table loads from a file without a second whole copy in memory."""
        self.reserve(n)
        if self.width == 0:
            return
        for k, chunk in enumerate(self.chunks):
            lo = k * self.chunk_rows
            if lo >= n:
                break
            hi = min(n, lo + chunk.shape[0])
            chunk[: hi - lo, : self.width] = np.asarray(read(lo, hi)).reshape(hi - lo, self.width)


@numba.njit(nogil=True, parallel=True, cache=True)
def _gather(ptrs, shift, mask, width, rows, out):
    """out[i] = row rows[i] of the chunks at `ptrs` (zeros for a negative row); out's dtype
    is the storage's."""
    n_cols = out.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        if r < 0:
            for j in range(n_cols):
                out[i, j] = 0
        else:
            src = numba.carray(voidptr(ptrs[r >> shift]), (mask + 1, width), out.dtype)
            o = r & mask
            for j in range(n_cols):
                out[i, j] = src[o, j]


@numba.njit(nogil=True, cache=True)
def _scatter(ptrs, shift, mask, width, rows, values):
    """Row rows[i] = values[i]. Serial: numba's parfor pass would drop these stores into
    carray views as dead code."""
    n_cols = values.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        dst = numba.carray(voidptr(ptrs[r >> shift]), (mask + 1, width), values.dtype)
        o = r & mask
        for j in range(n_cols):
            dst[o, j] = values[i, j]
