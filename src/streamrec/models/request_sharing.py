"""Request-level sharing in the dense layers: a request's own inputs pass through the first
layer once per request, not once per candidate.

A server scores R requests of many candidates each in one batch; a request's user and context
features are the same on all its rows (`RequestContext`). The first Linear layer over the
input [x_q, x_r] (request columns, row columns) is

    y = W_q x_q + W_r x_r + b

so W_q x_q + b is computed for the R requests and gathered to their B rows, and only W_r x_r
runs per row: the layer's multiply-adds fall by the request columns' share of its width
(two thirds for the MovieLens ranker, whose user, age, gender and occupation are the
request's). The sums run in another order than one GEMM over every column: scores agree with
the unshared path to float32 rounding (~1e-7), not to the bit.

Splitting costs a few tensor calls (~40 µs) whatever the batch, so a batch is split only
where it saves more multiply-adds than `MIN_SAVED_MACS` (what this CPU does in about that
time): a 1,000-candidate request, or several 100-candidate ones batched together, but not
one request of 100. Layers past the first see every input mixed, and run per row; so do
element-wise terms such as FM's second order, whose shared half would cost more to gather
than to compute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.embedding.collection import Embedded

MIN_SAVED_MACS = 2_000_000  # multiply-adds a split must save to pay for its own calls


class LayerInput:
    """The input of a model's first dense layer [B, width], held block by block in column
    order; a block is per row [B, w] or per request [R, w] (`index` [B]: each row's request)."""

    def __init__(self, index: torch.Tensor, num_requests: int) -> None:
        self.index = index
        self.num_requests = num_requests
        self.blocks: list[tuple[torch.Tensor, bool]] = []  # (x, per request)
        self.dense: tuple[Batch, int] | None = None  # (batch, its first column)
        self.width = 0
        self.shared_width = 0

    def add(self, block: torch.Tensor, per_request: bool = False) -> None:
        """Append columns: `block` [B, w], or [R, w] with `per_request`."""
        self.blocks.append((block, per_request))
        self.width += block.shape[1]
        self.shared_width += block.shape[1] if per_request else 0

    def add_dense(self, batch: Batch) -> None:
        """Append `batch.dense`: its request context's columns once per request (last: a
        model's dense features follow its embeddings)."""
        self.dense = (batch, self.width)
        self.width += batch.dense.shape[1]
        if batch.context is not None:
            self.shared_width += int(batch.context.dense_columns.numel())

    def saved_macs(self, layer: nn.Linear) -> int:
        """Multiply-adds the split saves in `layer`: (B − R) rows × request columns × out."""
        return (self.index.shape[0] - self.num_requests) * self.shared_width * layer.out_features

    def through(self, mlp: nn.Sequential, unshared: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`mlp(unshared())` — `unshared()` builds the same input [B, width] row by row — with
        its first Linear computed once per request for the request columns where that pays
        (`MIN_SAVED_MACS`). → [B, mlp's output width]."""
        first = mlp[0]
        if not isinstance(first, nn.Linear) or self.saved_macs(first) < min_saved_macs():
            return mlp(unshared())
        shared_x: list[torch.Tensor] = []
        own_x: list[torch.Tensor] = []
        shared_cols: list[torch.Tensor] = []
        own_cols: list[torch.Tensor] = []
        start = 0
        for block, per_request in self.blocks:
            width = block.shape[1]
            (shared_x if per_request else own_x).append(block)
            (shared_cols if per_request else own_cols).append(
                torch.arange(start, start + width, device=block.device)
            )
            start += width
        if self.dense is not None:
            self._split_dense(*self.dense, shared_x, shared_cols, own_x, own_cols)
        weight = first.weight
        w_shared = weight.index_select(1, torch.cat(shared_cols)).t()
        per_request = torch.addmm(first.bias, torch.cat(shared_x, 1), w_shared)  # [R, out]
        y = per_request.index_select(0, self.index)  # [B, out]
        if own_x:
            w_own = weight.index_select(1, torch.cat(own_cols)).t()
            y = torch.addmm(y, torch.cat(own_x, 1), w_own)
        for layer in list(mlp)[1:]:
            y = layer(y)
        return y

    @staticmethod
    def _split_dense(
        batch: Batch,
        start: int,
        shared_x: list[torch.Tensor],
        shared_cols: list[torch.Tensor],
        own_x: list[torch.Tensor],
        own_cols: list[torch.Tensor],
    ) -> None:
        dense, context = batch.dense, batch.context
        if dense.shape[1] == 0:
            return
        if context is None or context.dense_columns.numel() == 0:
            own_x.append(dense)
            own_cols.append(torch.arange(start, start + dense.shape[1], device=dense.device))
            return
        shared = context.dense_columns.to(dense.device)
        own = torch.ones(dense.shape[1], dtype=torch.bool, device=dense.device)
        own[shared] = False
        own_columns = own.nonzero().squeeze(1)
        shared_x.append(context.dense)
        shared_cols.append(start + shared)
        if own_columns.numel():
            own_x.append(dense.index_select(1, own_columns))
            own_cols.append(start + own_columns)


def shared_embedding_mlp(
    mlp: nn.Sequential,
    emb: Embedded,
    features: list[str],
    dims: list[int],
    batch: Batch,
    unshared: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """`mlp` over the usual input [embeddings of `features` (`dims` wide) in order,
    `batch.dense`], which `unshared()` builds; with a request context its first layer computes
    the request's embeddings and dense columns once per request where that pays."""
    context = batch.context
    if context is None or emb.context is None:
        return mlp(unshared())
    width = sum(d for f, d in zip(features, dims, strict=True) if f in context.features)
    if not worth_sharing(mlp, batch, width):
        return mlp(unshared())
    requests = emb.requests
    assert requests is not None
    x = LayerInput(requests.index, requests.num_requests)
    for f in features:
        if f in requests:
            x.add(requests.pooled(f), per_request=True)
        else:
            x.add(emb.pooled[f])
    x.add_dense(batch)
    return x.through(mlp, unshared)


def worth_sharing(mlp: nn.Sequential, batch: Batch, shared_embedding_width: int) -> bool:
    """Whether computing `mlp`'s first layer once per request, for `shared_embedding_width`
    embedding columns and the context's dense columns, saves `min_saved_macs()` on `batch`
    (decided before any of the split's own calls are made)."""
    first, context = mlp[0], batch.context
    if context is None or not isinstance(first, nn.Linear):
        return False
    width = shared_embedding_width + int(context.dense_columns.numel())
    saved = (batch.size - context.num_requests) * width * first.out_features
    return saved >= min_saved_macs()


_always = threading.local()


def min_saved_macs() -> int:
    """`MIN_SAVED_MACS`, or 0 within `always_split()` on this thread."""
    return 0 if getattr(_always, "on", False) else MIN_SAVED_MACS


@contextmanager
def always_split() -> Iterator[None]:
    """Within this block (on this thread), split every batch with a request context however
    little it saves — for checks that the split scores as the unshared path does."""
    before = getattr(_always, "on", False)
    _always.on = True
    try:
        yield
    finally:
        _always.on = before
