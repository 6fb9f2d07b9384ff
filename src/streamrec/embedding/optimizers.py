"""Row optimizers: per-row update rules applied in place to the unique rows a batch touched.

Rows a batch did not touch are never read or written ("lazy" semantics, as in TorchRec and
Monolith). The update is one numba kernel that reads each row's weights and state straight from
the table's chunked storage, applies the rule, and writes them back — no gathered copies — for
any number of tables at once (all tables of an EmbeddingCollection group in a single call).

State layout per row (state_width columns):
  sgd              —
  adagrad          sum of g² per coordinate                         [dim]
  rowwise_adagrad  sum of mean(g²) over the row                     [1]
  adam             step count t, first moment m, second moment v   [1 + 2·dim]   (lazy Adam:
                   each row has its own t, so bias correction follows the row's own updates)
  ftrl             z, n per coordinate (FTRL-Proximal, McMahan et al. 2013)  [2·dim]
"""

from __future__ import annotations

import math

import numba
import numpy as np

from streamrec.embedding.views import PREFETCH_AHEAD, f32_2d, i64_2d, prefetch, prefetch_span
from streamrec.table_config import TableConfig

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl")
_SGD, _ADAGRAD, _ROWWISE, _ADAM, _FTRL = range(5)


class RowOptimizer:
    """The update rule of one table, as its `TableConfig` sets it (`optimizer` and its
    hyper-parameters)."""

    def __init__(self, settings: TableConfig) -> None:
        self.settings = settings
        self.name = settings.optimizer

    @property
    def lr(self) -> float:
        return self.settings.lr

    @property
    def code(self) -> int:
        return OPTIMIZERS.index(self.name)

    def state_width(self, dim: int) -> int:
        return {
            "sgd": 0,
            "adagrad": dim,
            "rowwise_adagrad": 1,
            "adam": 1 + 2 * dim,
            "ftrl": 2 * dim,
        }[self.name]

    def initial_state(self, dim: int) -> np.ndarray:
        """float32 [state_width]: the state of a fresh (or reused) row."""
        init = np.zeros(self.state_width(dim), np.float32)
        if self.name in ("adagrad", "rowwise_adagrad"):
            init[:] = self.settings.initial_accumulator
        return init

    def hyperparameters(self) -> np.ndarray:
        """float64 [8]: the kernel's per-table parameter row (`TableConfig.hyperparameters`)."""
        return np.array(self.settings.hyperparameters(), np.float64)


# Below this many rows one thread does the step: waking the pool costs more than it saves.
_PARALLEL_MIN_ROWS = 4096


def apply_rows(
    code: int,
    hp: np.ndarray,
    tables: np.ndarray,
    rows: np.ndarray,
    grads: np.ndarray,
    w_ptrs: np.ndarray,
    s_ptrs: np.ndarray,
    ver_ptrs: np.ndarray,
    versions: np.ndarray,
    dim: int,
    state_width: int,
    shift: int,
    mask: int,
) -> None:
    """One optimizer step on rows[i] of table tables[i] with gradient grads[i] [dim].

    hp [T, 8] per-table hyper-parameters; w_ptrs/s_ptrs/ver_ptrs [T, chunks] chunk addresses;
    versions [T]: the version to stamp on updated rows. Rows must be distinct per table, so
    the threads, each taking a contiguous range of the rows, never write the same memory.
    """
    parts = numba.get_num_threads() if rows.shape[0] >= _PARALLEL_MIN_ROWS else 1
    # fmt: off
    _apply_parallel(parts, rows.shape[0], code, hp, tables, rows, grads,
                    w_ptrs, s_ptrs, ver_ptrs, versions, dim, state_width, shift, mask)
    # fmt: on


@numba.njit(nogil=True, parallel=True, cache=True)
def _apply_parallel(parts, n, *kernel_args):
    """Thread p steps rows [p·per, (p+1)·per): `_apply_range` with the same arguments."""
    per = (n + parts - 1) // parts
    for p in numba.prange(parts):
        _apply_range(p * per, min(n, (p + 1) * per), *kernel_args)


@numba.njit(nogil=True, inline="never", cache=True)
def _apply_range(
    lo,
    hi,
    code,
    hp,
    tables,
    rows,
    grads,
    w_ptrs,
    s_ptrs,
    ver_ptrs,
    versions,
    dim,
    state_width,
    shift,
    mask,
):
    """`apply_rows` on rows[lo:hi]. A separate, never-inlined function on purpose: numba's
    parfor pass drops stores into `carray` views made inside a prange body (it takes them for
    dead local arrays), but cannot see into a call."""
    n_chunk = mask + 1
    sw = max(state_width, 1)
    for i in range(lo, hi):
        if i + PREFETCH_AHEAD < hi:  # rows come in random order: start loading a later row's lines
            ta, ra = tables[i + PREFETCH_AHEAD], rows[i + PREFETCH_AHEAD]
            oa = ra & mask
            prefetch_span(w_ptrs[ta, ra >> shift] + oa * dim * 4, dim * 4)
            prefetch(s_ptrs[ta, ra >> shift] + oa * sw * 4)
            prefetch(ver_ptrs[ta, ra >> shift] + oa * 8)
        t = tables[i]
        r = rows[i]
        k = r >> shift
        o = r & mask
        w = f32_2d(w_ptrs[t, k], n_chunk, dim)[o]
        s = f32_2d(s_ptrs[t, k], n_chunk, sw)[o]
        g = grads[i]
        lr = hp[t, 0]
        eps = hp[t, 1]
        wd = hp[t, 7]
        if code == _SGD:
            for j in range(dim):
                w[j] -= lr * (g[j] + wd * w[j])
        elif code == _ADAGRAD:
            for j in range(dim):
                gj = g[j] + wd * w[j]
                s[j] += gj * gj
                w[j] -= lr * gj / (math.sqrt(s[j]) + eps)
        elif code == _ROWWISE:
            # float32 throughout the row loops (as FBGEMM): float64 hyper-parameters there
            # force a conversion per element and keep the loops from vectorising.
            wd32 = np.float32(wd)
            acc = np.float32(0.0)
            for j in range(dim):
                gj = g[j] + wd32 * w[j]
                acc += gj * gj
            s[0] += acc / np.float32(dim)
            step = np.float32(lr / (math.sqrt(s[0]) + eps))
            for j in range(dim):
                w[j] -= step * (g[j] + wd32 * w[j])
        elif code == _ADAM:
            b1 = hp[t, 2]
            b2 = hp[t, 3]
            s[0] += 1.0
            c1 = 1.0 - b1 ** s[0]
            c2 = 1.0 - b2 ** s[0]
            for j in range(dim):
                gj = g[j] + wd * w[j]
                s[1 + j] = b1 * s[1 + j] + (1.0 - b1) * gj
                s[1 + dim + j] = b2 * s[1 + dim + j] + (1.0 - b2) * gj * gj
                w[j] -= lr * (s[1 + j] / c1) / (math.sqrt(s[1 + dim + j] / c2) + eps)
        else:  # FTRL-Proximal, per coordinate
            l1 = hp[t, 4]
            l2 = hp[t, 5]
            beta = hp[t, 6]
            for j in range(dim):
                n_old = s[dim + j]
                n_new = n_old + g[j] * g[j]
                sigma = (math.sqrt(n_new) - math.sqrt(n_old)) / lr
                s[j] += g[j] - sigma * w[j]
                s[dim + j] = n_new
                z = s[j]
                if abs(z) <= l1:
                    w[j] = 0.0
                else:
                    w[j] = -(z - math.copysign(l1, z)) / ((beta + math.sqrt(n_new)) / lr + l2)
        i64_2d(ver_ptrs[t, k], n_chunk, 1)[o, 0] = versions[t]
