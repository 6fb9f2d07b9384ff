"""Array views from raw addresses inside numba kernels.

A table's storage is many separately allocated numpy arrays (hash-map shards, row chunks), so
that growth allocates new arrays instead of copying old ones. Handing numba a typed List of
arrays costs a reference-count round trip on every element access — tens of nanoseconds per id,
more than the lookup itself. Instead the Python side keeps the arrays alive and passes an int64
array of their data addresses; kernels rebuild plain array views with `numba.carray`, which is
free. The owner must keep every array referenced while its address is in use (the classes in
`hashmap.py` and `rows.py` do).

Whoever caches address arrays (a `TableGroup`) must know when storage moved. Every allocation
or move of table storage calls `storage_moved()`, which advances one process-wide clock;
`storage_clock()` unchanged since the cache was built means every cached address is valid.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_MOVES = itertools.count(1)  # next() is atomic: every move gets a value never seen before
_CLOCK = [0]


def storage_moved() -> int:
    """Record that some table storage was allocated or moved (call it after the move);
    → the new clock value."""
    _CLOCK[0] = value = next(_MOVES)
    return value


def storage_clock() -> int:
    """The clock's value: it changes whenever any table storage in the process moves."""
    return _CLOCK[0]


@intrinsic
def voidptr(typingctx, address):
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


PREFETCH_AHEAD = 8  # items between a prefetch and the work that needs the line


@intrinsic
def prefetch(typingctx, address):
    """Ask the CPU to start loading the cache line at `address` (for writing): kernels that
    walk rows in random order issue it a few rows ahead, so the misses overlap."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        ptr = builder.inttoptr(args[0], i8p)
        # rw = 1 (write), locality = 3 (keep in all cache levels), cache type = 1 (data)
        builder.call(fn, [ptr, i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def prefetch_span(address: int, nbytes: int) -> None:
    """`prefetch` every cache line of [address, address + nbytes): one row of a table."""
    for line in range(0, nbytes, 64):
        prefetch(address + line)


def address(arr: np.ndarray) -> int:
    if not arr.flags.c_contiguous:
        raise ValueError("only C-contiguous arrays can be viewed by address")
    return int(arr.ctypes.data)


def _views_of(dtype: type) -> tuple:
    """(view_1d(ptr, n), view_2d(ptr, rows, width)): raw memory at `ptr` as a numba array of
    `dtype`, inlined into the kernels that use them."""

    @numba.njit(inline="always")
    def view_1d(ptr: int, n: int) -> np.ndarray:
        return numba.carray(voidptr(ptr), (n,), dtype)

    @numba.njit(inline="always")
    def view_2d(ptr: int, rows: int, width: int) -> np.ndarray:
        return numba.carray(voidptr(ptr), (rows, width), dtype)

    return view_1d, view_2d


f32_1d, f32_2d = _views_of(np.float32)
i32_1d, i32_2d = _views_of(np.int32)
i64_2d = _views_of(np.int64)[1]
u32_2d = _views_of(np.uint32)[1]
