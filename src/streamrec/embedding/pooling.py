"""Pooling the rows of a batch's unique ids into per-feature bags, and padding sequences.

A `TableGroup` hands over W [U, dim] (the unique rows of every table in the group) and, for
every id of the batch, its row of W (`inverse`), laid out feature after feature. Pooling makes
[B, F, dim]: the F features of the group side by side, the layout models stack or concatenate.
Backward gives W's gradient [U, dim], which the collection hands to the row optimizer.

Tried and not kept (benchmarks/RESULTS.md): summing each unique row's gradient from the
pooled gradient inside the optimizer step (FBGEMM's shape, no [U, dim] buffer) — slower here
than scattering into W's gradient, which stays in cache, and stepping from it.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F

from streamrec.batch import JaggedIds
from streamrec.embedding.views import f32_1d
from streamrec.schema import EmbeddingFeature


class FeaturePooling:
    """How one group's features pool: worked out once per model, applied to every batch.

    `pooling(weights, inverse, parts, device)` pools every feature of the group in one go →
    [B, F, dim], ready for models that stack or concatenate features (no copy). Every bag is
    pooled as a (weighted) sum; mean and sqrtn bags are then scaled by 1/len and 1/sqrt(len).
    Empty bags pool to zeros. On CPU one numba kernel reads the ids where they lie (feature
    after feature) and writes [B, F, dim] directly; on GPU the ids are first laid out row-major
    for one embedding_bag."""

    def __init__(self, features: list[EmbeddingFeature]) -> None:
        self.features = features
        self.modes = [f.pooling for f in features]
        self.scaled = any(m != "sum" for m in self.modes)
        self.sequences = any(f.max_length is not None for f in features)  # also padded
        # Features reading distinct tables write distinct gradient rows: backward can split them
        # between threads; features sharing a table are summed by one thread.
        self.exclusive = len({f.table_name for f in features}) == len(features)
        self._scaling = np.array([_SCALINGS.index(m) for m in self.modes], np.int64)

    def __call__(
        self,
        weights: torch.Tensor,
        inverse: torch.Tensor,
        parts: list[JaggedIds],
        device: torch.device,
    ) -> torch.Tensor:
        batch_size, n_features = parts[0].batch_size, len(parts)
        if device.type == "cpu" and not (weights.requires_grad and torch.is_grad_enabled()):
            return self._pool_for_inference(weights, inverse, parts)
        stacked = torch.stack([p.offsets for p in parts])  # [F, B+1]
        psw = None
        if any(p.weights is not None for p in parts):
            psw = torch.cat(
                [
                    p.weights if p.weights is not None else torch.ones(p.values.numel())
                    for p in parts
                ]
            ).float()
        if device.type == "cpu":
            starts = np.zeros(n_features, np.int64)
            starts[1:] = stacked[:-1, -1].numpy()
            np.cumsum(starts, out=starts)
            pooled = _FeaturePool.apply(
                weights, inverse, stacked.numpy(), starts, psw, self.exclusive
            )
        else:
            pooled = pool_row_major(weights, inverse, stacked, psw, device)
        pooled = pooled.view(batch_size, n_features, weights.shape[1])
        if self.scaled:
            n = (stacked[:, 1:] - stacked[:, :-1]).T.to(device).clamp(min=1).float()  # [B, F]
            scale = torch.ones_like(n)
            for i, m in enumerate(self.modes):
                if m == "mean":
                    scale[:, i] = 1.0 / n[:, i]
                elif m == "sqrtn":
                    scale[:, i] = n[:, i].rsqrt()
            pooled = pooled * scale[:, :, None]
        return pooled

    def _pool_for_inference(
        self, weights: torch.Tensor, inverse: torch.Tensor, parts: list[JaggedIds]
    ) -> torch.Tensor:
        """The same pooling without autograd's bookkeeping, in numpy: a serving call pools a
        few hundred rows, where torch's per-op overhead (~80 µs a call) was 15× the kernel."""
        offsets = np.empty((len(parts), parts[0].batch_size + 1), np.int64)  # [F, B+1]
        for f, p in enumerate(parts):
            offsets[f] = p.offsets.numpy()
        starts = np.zeros(len(parts), np.int64)
        np.cumsum(offsets[:-1, -1], out=starts[1:])
        psw = _NO_WEIGHTS
        if any(p.weights is not None for p in parts):
            psw = np.concatenate([
                p.weights.numpy() if p.weights is not None
                else np.ones(p.values.shape[0], np.float32)
                for p in parts
            ]).astype(np.float32, copy=False)
        w = weights.contiguous().numpy()
        out = np.empty((offsets.shape[1] - 1, len(parts), w.shape[1]), np.float32)
        _pool_features(w, inverse.numpy(), offsets, starts, psw, out)
        if self.scaled:
            _scale_bags(out, offsets, self._scaling)
        return torch.from_numpy(out)

    def pad_sequences(
        self,
        weights: torch.Tensor,
        inverse: torch.Tensor,
        parts: list[JaggedIds],
        device: torch.device,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{feature: (padded [B, L, dim], mask [B, L])} for the features with `max_length`."""
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if not self.sequences:
            return out
        start = 0
        for feature, ids in zip(self.features, parts, strict=True):
            n = ids.values.numel()
            if feature.max_length is not None:
                out[feature.name] = pad_sequence(
                    weights, inverse[start : start + n], ids.to(device), feature.max_length
                )
            start += n
        return out


class _FeaturePool(torch.autograd.Function):
    """CPU sum pooling straight from the feature-after-feature id layout.

    weights [U, dim] float32, inverse [n] (row of W for every id), offsets [F, B+1] (each
    feature's bag offsets into its own ids), starts [F] (where feature f's ids begin),
    per_sample_weights [n] or None → [B, F, dim]. Backward scatters into the U rows only."""

    @staticmethod
    def forward(ctx, weights, inverse, offsets, starts, per_sample_weights, exclusive):
        batch = offsets.shape[1] - 1
        out = torch.empty(batch, offsets.shape[0], weights.shape[1])
        psw = _NO_WEIGHTS if per_sample_weights is None else per_sample_weights.numpy()
        w = weights.detach().contiguous()
        _pool_features(w.numpy(), inverse.numpy(), offsets, starts, psw, out.numpy())
        ctx.save_for_backward(inverse, per_sample_weights)
        ctx.layout = (offsets, starts, weights.shape[0], exclusive)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inverse, psw = ctx.saved_tensors
        offsets, starts, num_rows, exclusive = ctx.layout
        grad_w = torch.zeros(num_rows, grad_out.shape[2])
        _unpool_features(
            _unit_last_stride(grad_out.float()).numpy(),
            inverse.numpy(),
            offsets,
            starts,
            _NO_WEIGHTS if psw is None else psw.numpy(),
            numba.get_num_threads() if exclusive else 1,
            grad_w.numpy(),
        )
        return grad_w, None, None, None, None, None


_NO_WEIGHTS = np.empty(0, np.float32)
_SCALINGS = ("sum", "mean", "sqrtn")


@numba.njit(nogil=True, cache=True)
def _scale_bags(out, offsets, scaling):
    """out[b, f] *= 1/len (mean) or 1/√len (sqrtn) of bag (b, f), len at least 1 — in float32,
    as the autograd path computes it (1 / n, n.rsqrt())."""
    for f in range(offsets.shape[0]):
        if scaling[f] == 0:
            continue
        for b in range(offsets.shape[1] - 1):
            n = np.float32(max(offsets[f, b + 1] - offsets[f, b], 1))
            s = np.float32(1.0) / n if scaling[f] == 1 else np.float32(1.0) / np.sqrt(n)
            for j in range(out.shape[2]):
                out[b, f, j] *= s
_BAGS_PER_BLOCK = 64  # forward: a thread pools features f = 0‥F-1 for 64 rows of the batch


def _unit_last_stride(grad: torch.Tensor) -> torch.Tensor:
    """grad [B, F, dim] with its last dimension contiguous, without copying the common case of
    one value broadcast everywhere (the gradient of a sum or mean loss: strides (0, 0, 0))."""
    if grad.stride(2) == 1 or grad.shape[2] == 1:
        return grad
    if grad.stride(0) == 0 and grad.stride(1) == 0:
        return grad[0, 0].contiguous().expand(grad.shape)
    return grad.contiguous()


@numba.njit(nogil=True, inline="always", cache=True)
def _one_id_per_bag(offsets, f, b0, b1):
    """Do bags b0‥b1-1 of feature f hold exactly one id each (a single-valued feature)?"""
    single = True
    for b in range(b0, b1):
        single &= offsets[f, b + 1] - offsets[f, b] == 1
    return single


@numba.njit(nogil=True, parallel=True, cache=True)
def _pool_features(weights, inverse, offsets, starts, psw, out):
    """out[b, f] = Σ psw[i] · weights[inverse[i]] over the ids i of feature f in row b.

    Threads take blocks of rows; within a block, feature by feature, so each feature's offsets
    and ids are read in order. Runs of one-id bags (single-valued features, the usual case in
    CTR data) are a plain gather. No prefetch: W is small and read by every thread, and a
    prefetch-for-write would bounce its lines between cores."""
    n_features, batch, dim = offsets.shape[0], offsets.shape[1] - 1, weights.shape[1]
    weighted = psw.shape[0] > 0
    for block in numba.prange((batch + _BAGS_PER_BLOCK - 1) // _BAGS_PER_BLOCK):
        b0 = block * _BAGS_PER_BLOCK
        b1 = min(batch, b0 + _BAGS_PER_BLOCK)
        for f in range(n_features):
            first = starts[f] + offsets[f, b0] - b0  # id of bag b is first + b when single
            if _one_id_per_bag(offsets, f, b0, b1):
                for b in range(b0, b1):
                    r = inverse[first + b]
                    w = psw[first + b] if weighted else np.float32(1.0)
                    for j in range(dim):
                        out[b, f, j] = w * weights[r, j]
                continue
            for b in range(b0, b1):
                lo, hi = starts[f] + offsets[f, b], starts[f] + offsets[f, b + 1]
                if lo == hi:
                    for j in range(dim):
                        out[b, f, j] = 0.0
                    continue
                r = inverse[lo]  # the first id is stored, not added: one pass for 1-id bags
                w = psw[lo] if weighted else np.float32(1.0)
                for j in range(dim):
                    out[b, f, j] = w * weights[r, j]
                for i in range(lo + 1, hi):
                    r = inverse[i]
                    w = psw[i] if weighted else np.float32(1.0)
                    for j in range(dim):
                        out[b, f, j] += w * weights[r, j]


@numba.njit(nogil=True, parallel=True, cache=True)
def _unpool_features(grad_out, inverse, offsets, starts, psw, parts, grad_w):
    """grad_w[inverse[i]] += psw[i] · grad_out[b, f] for every id i of feature f in row b;
    thread p takes features p, p + parts, … (parts > 1 only when they write distinct rows).

    grad_out may have any strides but a unit last one (see `_unit_last_stride`): each
    grad_out[b, f] is read through a contiguous view, so the adds vectorise."""
    n_features, batch, dim = offsets.shape[0], offsets.shape[1] - 1, grad_w.shape[1]
    weighted = psw.shape[0] > 0
    base = np.int64(grad_out.ctypes.data)
    stride_b, stride_f = grad_out.strides[0], grad_out.strides[1]
    for p in numba.prange(parts):
        for f in range(p, n_features, parts):
            for b in range(batch):
                g = f32_1d(base + b * stride_b + f * stride_f, dim)
                lo, hi = starts[f] + offsets[f, b], starts[f] + offsets[f, b + 1]
                for i in range(lo, hi):
                    r = inverse[i]
                    w = psw[i] if weighted else np.float32(1.0)
                    for j in range(dim):
                        grad_w[r, j] += w * g[j]


def pool_row_major(
    weights: torch.Tensor,
    inverse: torch.Tensor,
    stacked: torch.Tensor,
    psw: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """GPU pooling: the ids laid out row-major (row b's ids of feature 0, 1, …, then row b+1),
    so a single embedding_bag writes [B·F, dim] already in [B, F, dim] order."""
    order, lengths = _row_major(stacked.numpy())
    order_t = torch.from_numpy(order).to(device)
    inverse = inverse.index_select(0, order_t)
    if psw is not None:
        psw = psw.to(device).index_select(0, order_t)
    lengths_t = torch.from_numpy(lengths).to(device)
    offsets = torch.cumsum(lengths_t, 0) - lengths_t
    return _SumPool.apply(weights, inverse, offsets, lengths_t, psw)


@numba.njit(nogil=True, cache=True)
def _row_major(offsets):
    """offsets [F, B+1] of F features' ids laid out feature after feature → (order [n]: the
    positions of the ids in row-major (b, f) order, lengths [B·F] of the bags in that order)."""
    n_features, batch = offsets.shape[0], offsets.shape[1] - 1
    base = np.zeros(n_features, np.int64)
    for f in range(1, n_features):
        base[f] = base[f - 1] + offsets[f - 1, batch]
    total = base[n_features - 1] + offsets[n_features - 1, batch]
    order = np.empty(total, np.int64)
    lengths = np.empty(batch * n_features, np.int64)
    k = 0
    for b in range(batch):
        for f in range(n_features):
            lo, hi = offsets[f, b], offsets[f, b + 1]
            lengths[b * n_features + f] = hi - lo
            for i in range(lo, hi):
                order[k] = base[f] + i
                k += 1
    return order, lengths


class _SumPool(torch.autograd.Function):
    """Sum-pool rows of W into bags (the GPU path); backward is one index_add (no sort, unlike
    embedding_bag's dense backward).

    weights [U, dim], inverse [n] (row of W for every id), offsets/lengths [bags],
    per_sample_weights [n] or None → [bags, dim]."""

    @staticmethod
    def forward(ctx, weights, inverse, offsets, lengths, per_sample_weights):
        out = F.embedding_bag(
            inverse, weights, offsets, mode="sum", per_sample_weights=per_sample_weights
        )
        ctx.save_for_backward(inverse, lengths, per_sample_weights)
        ctx.num_rows = weights.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inverse, lengths, psw = ctx.saved_tensors
        bag_of = torch.repeat_interleave(
            torch.arange(lengths.numel(), device=lengths.device), lengths
        )
        g = grad_out.index_select(0, bag_of)
        if psw is not None:
            g = g * psw[:, None]
        grad_w = grad_out.new_zeros(ctx.num_rows, grad_out.shape[1]).index_add_(0, inverse, g)
        return grad_w, None, None, None, None


def pad_sequence(
    weights: torch.Tensor, idx: torch.Tensor, ids: JaggedIds, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned padded sequence [B, L, dim] and mask [B, L] (True = a real id).
    The schema already keeps only the last `max_length` ids of each row."""
    lengths = ids.lengths()
    if lengths.numel() and int(lengths.max()) > max_length:
        raise ValueError(f"a row has {int(lengths.max())} ids, more than max_length={max_length}")
    b, dim = ids.batch_size, weights.shape[1]
    rows = torch.repeat_interleave(torch.arange(b, device=idx.device), lengths)
    pos = torch.arange(ids.values.numel(), device=idx.device) - ids.offsets[:-1][rows]
    flat = weights.new_zeros(b * max_length, dim)
    flat = flat.index_copy(0, rows * max_length + pos, weights[idx])
    mask = torch.arange(max_length, device=idx.device)[None, :] < lengths[:, None]
    return flat.view(b, max_length, dim), mask
