"""Weights stored in fewer bits, read back as float32 one gathered row at a time.

A served table's rows need none of training's precision: Facebook's inference paper serves
row-wise 8-bit embeddings, and "Ad Click Prediction: a View from the Trenches" §5 stores
coefficients in 16 bits. Here each row r of width `dim` is kept as codes c[r] (uint8 or uint16)
and two float32 parameters (scale s[r], offset o[r]):

    row[j] = c[r, j] · s[r] + o[r],   o[r] = min_j w[r, j],   s[r] = (max − min) / (2^bits − 1)

— asymmetric per row, so a row's own range sets its resolution (an error of at most s[r] / 2 per
element), a constant row (FTRL's exact zeros) is stored exactly (s = 0), and rows stay
independent (a delta re-encodes only the rows it carries). Bytes per row: int8 dim + 8
(fp32: 4·dim — smaller from dim 4 on), int16 2·dim + 8, codes padded to whole 4-byte words.

`QuantizedRows` offers the part of `ChunkedRows`' interface that a served `DynamicTable` uses —
gather (de-quantising only the rows asked for), scatter (quantising the rows given), load and
save chunk by chunk — and `gather_quantized` is the kernel `TableGroup` calls for many tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import numba
import numpy as np
import torch

from streamrec.embedding.rows import ChunkedRows
from streamrec.embedding.views import PREFETCH_AHEAD, prefetch_span, voidptr

RowPrecision = Literal["fp32", "int16", "int8"]
ROW_PRECISIONS: tuple[str, ...] = ("fp32", "int16", "int8")
_CODES = {"int8": np.uint8, "int16": np.uint16}


def row_bytes(dim: int, precision: str) -> int:
    """Bytes one row's weights take at `precision` (codes padded to whole 4-byte words)."""
    if precision == "fp32":
        return 4 * dim
    return 4 * -(-dim * np.dtype(_CODES[precision]).itemsize // 4) + 8


def worth_quantizing(dim: int, precision: str) -> bool:
    """Whether `precision` stores rows of `dim` in fewer bytes than fp32 (int8 from dim 4,
    int16 from dim 6: the per-row scale and offset cost 8 bytes)."""
    return precision != "fp32" and row_bytes(dim, precision) < 4 * dim


def quantize(weights: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, dim] → (codes [n, dim] uint8 / uint16, params float32 [n, 2] = scale,
    offset) as the module docstring defines them."""
    if precision not in _CODES:
        raise ValueError(f"precision must be one of {sorted(_CODES)}, got {precision!r}")
    w = np.asarray(weights, np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be [n, dim], got shape {w.shape}")
    params = np.zeros((w.shape[0], 2), np.float32)
    if w.shape[0] == 0 or w.shape[1] == 0:
        return np.zeros(w.shape, _CODES[precision]), params
    levels = np.iinfo(_CODES[precision]).max
    lo = w.min(axis=1)
    scale = ((w.max(axis=1).astype(np.float64) - lo) / levels).astype(np.float32)
    divisor = np.where(scale > 0, scale, np.float32(1))
    codes = np.rint((w - lo[:, None]) / divisor[:, None])
    params[:, 0], params[:, 1] = scale, lo
    return np.clip(codes, 0, levels).astype(_CODES[precision]), params


def dequantize(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    """(codes [n, dim], params [n, 2]) → float32 [n, dim]."""
    return codes.astype(np.float32) * params[:, :1] + params[:, 1:2]


class QuantizedRows:
    """A growable [capacity, width] float32 array kept as codes + per-row (scale, offset), in
    FBGEMM's fused layout: row r is one `ChunkedRows` row of float32 words holding its codes
    (padded to a whole word) and then its scale and offset, so reading a row touches one
    contiguous span (24 bytes at dim 16 in int8). Read-only tables only: nothing here applies
    gradients."""

    def __init__(self, width: int, precision: str, chunk_rows: int) -> None:
        if precision not in _CODES:
            raise ValueError(f"precision must be one of {sorted(_CODES)}, got {precision!r}")
        self.precision = precision
        self.width = width
        self.dtype = np.dtype(np.float32)  # what gather returns and scatter takes
        self.code_dtype = np.dtype(_CODES[precision])
        self.code_words = -(-width * self.code_dtype.itemsize // 4)  # codes, in float32 words
        self.packed = ChunkedRows(self.code_words + 2, np.float32, chunk_rows)
        self.chunk_rows = chunk_rows
        self.shift, self.mask = self.packed.shift, self.packed.mask

    @classmethod
    def encode(cls, rows: ChunkedRows, n: int, precision: str) -> QuantizedRows:
        """The first n rows of a float32 store, quantised chunk by chunk (never a whole fp32
        copy beside the store)."""
        out = cls(rows.width, precision, rows.chunk_rows)
        out.reserve(max(n, 1))
        lo = 0
        for piece in rows.pieces(n):
            hi = lo + piece.shape[0]
            out.scatter(np.arange(lo, hi, dtype=np.int64), piece)
            lo = hi
        return out

    @property
    def ptrs(self) -> np.ndarray:
        return self.packed.ptrs

    @property
    def capacity(self) -> int:
        return self.packed.capacity

    def reserve(self, rows: int) -> None:
        self.packed.reserve(rows)

    def nbytes(self) -> int:
        return self.packed.nbytes()

    def gather(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 [len(rows), width]: the rows de-quantised (a negative row reads zeros)."""
        if out is None:
            out = torch.empty((rows.shape[0], self.width), dtype=torch.float32).numpy()
        gather_quantized(
            self.precision, np.zeros(rows.shape[0], np.int64), rows, self.ptrs[None, :],
            self.shift, self.mask, self.width, out,
        )
        return out

    def _pack(self, codes: np.ndarray, params: np.ndarray) -> np.ndarray:
        """codes [n, width], params [n, 2] → packed rows [n, code_words + 2] float32."""
        packed = np.zeros((codes.shape[0], self.code_words + 2), np.float32)
        packed.view(np.uint8)[:, : codes.shape[1] * self.code_dtype.itemsize] = (
            np.ascontiguousarray(codes, self.code_dtype).view(np.uint8)
        )
        packed[:, self.code_words:] = params
        return packed

    def _unpack(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = np.ascontiguousarray(packed[:, : self.code_words]).view(self.code_dtype)
        return raw[:, : self.width].copy(), packed[:, self.code_words:].copy()

    def scatter(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Row rows[i] = values[i] (float32, quantised here; rows distinct, non-negative)."""
        codes, params = quantize(
            np.asarray(values, np.float32).reshape(-1, self.width), self.precision
        )
        self.packed.scatter(rows, self._pack(codes, params))

    def clear(self, rows: np.ndarray) -> None:
        """Rows read zeros from now on (a freshly admitted row holds a reused row's codes)."""
        self.packed.scatter(rows, np.zeros((rows.shape[0], self.code_words + 2), np.float32))

    def to_array(self, n: int) -> np.ndarray:
        """The first n rows de-quantised, [n, width] float32 (a copy)."""
        return self.gather(np.arange(n, dtype=np.int64))

    def pieces(self, n: int) -> Iterator[np.ndarray]:
        """The first n rows de-quantised, chunk by chunk."""
        for packed in self.packed.pieces(n):
            yield dequantize(*self._unpack(packed))

    def load_rows(self, read: Callable[[int, int], np.ndarray], n: int) -> None:
        """Replace the first n rows from float32 `read(lo, hi)`, quantising chunk by chunk."""
        self.reserve(n)
        for lo in range(0, n, self.chunk_rows):
            hi = min(n, lo + self.chunk_rows)
            self.scatter(np.arange(lo, hi, dtype=np.int64), read(lo, hi))

    def saved_parts(self) -> dict[str, SavedPart]:
        """How a model file holds these rows: `weights` = the codes [n, width] (uint8 /
        uint16), `weight_params` = (scale, offset) [n, 2] float32 — the delta files' layout."""
        return {"weights": SavedPart(self, 0), "weight_params": SavedPart(self, 1)}


class SavedPart:
    """One of a `QuantizedRows`' saved arrays (0: codes, 1: params), read and written chunk by
    chunk like a `ChunkedRows` (`to_array`, `load_rows`) — what `DynamicTable.state_dict` and
    `load_state_dict` call. Codes load before params (`row_fields` order)."""

    def __init__(self, rows: QuantizedRows, part: int) -> None:
        self.rows, self.part = rows, part
        self.dtype = rows.code_dtype if part == 0 else np.dtype(np.float32)

    def to_array(self, n: int) -> np.ndarray:
        parts = [self.rows._unpack(p)[self.part] for p in self.rows.packed.pieces(n)]
        width = self.rows.width if self.part == 0 else 2
        return np.concatenate(parts) if parts else np.zeros((0, width), self.dtype)

    def load_rows(self, read: Callable[[int, int], np.ndarray], n: int) -> None:
        rows = self.rows
        rows.reserve(n)
        for k, chunk in enumerate(rows.packed.chunks):
            lo = k * rows.chunk_rows
            if lo >= n:
                break
            hi = min(n, lo + chunk.shape[0])
            if self.part == 0:
                codes = np.ascontiguousarray(read(lo, hi), rows.code_dtype)
                raw = chunk[: hi - lo, : rows.code_words].view(np.uint8)
                raw[:, : codes.shape[1] * rows.code_dtype.itemsize] = codes.view(np.uint8)
            else:
                chunk[: hi - lo, rows.code_words:] = read(lo, hi)


@numba.njit(nogil=True, parallel=True, cache=True)
def _gather(tabs, rows, ptrs, shift, mask, dim, words, code_like, out):
    """out[i] = row rows[i] of table tabs[i], de-quantised (zeros for a negative row); each
    row is `words` float32 words: codes (code_like's dtype), then scale and offset."""
    n = rows.shape[0]
    row_bytes = words * 4
    for i in numba.prange(n):
        if i + PREFETCH_AHEAD < n and rows[i + PREFETCH_AHEAD] >= 0:  # rows are random reads
            ra = rows[i + PREFETCH_AHEAD]
            prefetch_span(ptrs[tabs[i + PREFETCH_AHEAD], ra >> shift] + (ra & mask) * row_bytes,
                          row_bytes)
        r = rows[i]
        dst = out[i]
        if r < 0:
            dst[:] = 0.0
            continue
        address = ptrs[tabs[i], r >> shift] + (r & mask) * row_bytes
        params = numba.carray(voidptr(address), (words,), np.float32)
        codes = numba.carray(voidptr(address), (dim,), code_like.dtype)
        scale, offset = params[words - 2], params[words - 1]
        for j in range(dim):  # 1-D views: LLVM vectorises the conversion
            dst[j] = np.float32(codes[j]) * scale + offset


_CODE_LIKE = {name: np.zeros(0, dtype) for name, dtype in _CODES.items()}


def gather_quantized(
    precision: str,
    tabs: np.ndarray,
    rows: np.ndarray,
    ptrs: np.ndarray,
    shift: int,
    mask: int,
    dim: int,
    out: np.ndarray,
) -> None:
    """out [n, dim] float32 ← rows (int64 [n], −1: zeros) of tables tabs (int64 [n]), whose
    packed rows' chunk addresses are ptrs [tables, chunks] (`QuantizedRows.ptrs`)."""
    code = _CODE_LIKE[precision]
    words = -(-dim * code.itemsize // 4) + 2
    _gather(tabs, rows, ptrs, shift, mask, dim, words, code, out)
