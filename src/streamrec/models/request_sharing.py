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

Splitting costs a dozen tensor calls (~60–80 µs) whatever the batch, and this CPU's GEMMs run
~100 G multiply-adds a second on these shapes, so a batch is split only where it saves more
than `MIN_SAVED_MACS`: a 1,000-candidate request, or several 100-candidate ones batched for a
wide first layer (`benchmarks/request_sharing.py`: 1.14–1.18× a ranker call there, neutral
below). Layers past the first see every input mixed, and run per row; so do element-wise terms
such as FM's second order, whose shared half would cost more to gather than to compute.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.embedding.collection import Embedded
from streamrec.models.layers import MLP
from streamrec.thread_flag import ThreadFlag

MIN_SAVED_MACS = 8_000_000  # multiply-adds a split must save to pay for its own calls


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


    def through(self, mlp: nn.Sequential, unshared: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`mlp(unshared())` — `unshared()` builds the same input [B, width] row by row — with
        its first Linear computed once per request for the request columns where that pays
        (`MIN_SAVED_MACS`). → [B, mlp's output width]."""
        first = mlp[0]
        if not isinstance(first, nn.Linear) or not split_pays(
            self.index.shape[0], self.num_requests, self.shared_width, first
        ):
            return mlp(unshared())
        shared_x = [block for block, per_request in self.blocks if per_request]
        own_x = [block for block, per_request in self.blocks if not per_request]
        dense_layout = None
        if self.dense is not None:
            batch, start = self.dense
            context = batch.context
            shared_dense = () if context is None else tuple(context.dense_columns.tolist())
            dense_layout = (start, batch.dense.shape[1], shared_dense)
            if shared_dense:
                shared_x.append(context.dense)  # type: ignore[union-attr]
        shared_cols, own_cols, own_dense = _split_columns(
            tuple((block.shape[1], per_request) for block, per_request in self.blocks),
            dense_layout,
        )
        if self.dense is not None and own_dense.numel():
            dense = self.dense[0].dense
            own_x.append(dense if own_dense.numel() == dense.shape[1]
                         else dense.index_select(1, own_dense.to(dense.device)))
        return split_through(
            mlp, self.index, torch.cat(shared_x, 1), shared_cols,
            torch.cat(own_x, 1) if own_x else None, own_cols,
        )


def split_through(
    mlp: nn.Sequential,
    index: torch.Tensor,
    shared_x: torch.Tensor,
    shared_columns: torch.Tensor,
    own_x: torch.Tensor | None,
    own_columns: torch.Tensor,
) -> torch.Tensor:
    """`mlp` over an input whose columns `shared_columns` [s] are per request (`shared_x`
    [R, s]) and `own_columns` [o] per row (`own_x` [B, o], None when o = 0), both in the order
    of their tensors' columns: the first Linear's request part once per request, gathered to
    the rows by `index` [B], then the row part added. → [B, mlp's output width]."""
    first = mlp[0]
    weight = first.weight
    w_shared = weight.index_select(1, shared_columns.to(weight.device)).t()
    per_request = torch.addmm(first.bias, shared_x, w_shared)  # [R, out]
    y = per_request.index_select(0, index)  # [B, out]
    if own_x is not None:
        w_own = weight.index_select(1, own_columns.to(weight.device)).t()
        y = torch.addmm(y, own_x, w_own)
    if isinstance(mlp, MLP):  # its Linear + ReLU pairs in oneDNN (onednn_linear)
        return mlp.forward_from(y, 1)
    for layer in list(mlp)[1:]:
        y = layer(y)
    return y


@functools.lru_cache(maxsize=256)
def _split_columns(
    blocks: tuple[tuple[int, bool], ...], dense: tuple[int, int, tuple[int, ...]] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For an input laid out as `blocks` ((width, per request) each) then, if given, the dense
    block (its first column, its width, its columns the requests share): the layer's columns
    of the per-request inputs and of the per-row inputs, each in the order their blocks are
    concatenated, and the dense columns that are per row. Made once per layout."""
    shared: list[int] = []
    own: list[int] = []
    start = 0
    for width, per_request in blocks:
        (shared if per_request else own).extend(range(start, start + width))
        start += width
    own_dense: list[int] = []
    if dense is not None:
        first, width, shared_dense = dense
        shared.extend(first + c for c in shared_dense)
        own_dense = [c for c in range(width) if c not in set(shared_dense)]
        own.extend(first + c for c in own_dense)
    return (
        torch.tensor(shared, dtype=torch.int64),
        torch.tensor(own, dtype=torch.int64),
        torch.tensor(own_dense, dtype=torch.int64),
    )


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
    return split_pays(batch.size, context.num_requests, width, first)


def split_pays(rows: int, requests: int, shared_width: int, layer: nn.Linear) -> bool:
    """Whether splitting `layer` saves `min_saved_macs()`: (B − R) rows × request columns ×
    out. Never for a batch without request columns (there is nothing to split)."""
    saved = (rows - requests) * shared_width * layer.out_features
    return shared_width > 0 and saved >= min_saved_macs()


_always = ThreadFlag()


def min_saved_macs() -> int:
    """`MIN_SAVED_MACS`, or 0 within `always_split()` on this thread."""
    return 0 if _always else MIN_SAVED_MACS


def always_split() -> AbstractContextManager[None]:
    """Within this block (on this thread), split every batch with a request context however
    little it saves — for checks that the split scores as the unshared path does."""
    return _always.raised()
