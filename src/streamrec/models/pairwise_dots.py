"""DLRM's feature interaction: the dot product of every pair of a row's vectors.

`pairwise_dots(stacked, pair_index)` is `bmm(S, Sᵀ)` flattened and cut to the pairs named by
`pair_index` (flat positions `i·n + j` in the n×n product). The math is torch's; only the
backward differs from autograd's. Autograd differentiates `S Sᵀ` as two batched matmuls
(`G S` and `Gᵀ S`) and adds them; here the pair gradient is written into one n×n matrix at
`(i, j)` and at `(j, i)` and multiplied once: `dS = (G + Gᵀ) S`, one `bmm` instead of two
(measured in the DLRM training step: `benchmarks/RESULTS.md`, "End-to-end training").
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from streamrec.models.graph_capture import capturing_graph


def pairwise_dots(stacked: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """stacked [B, n, d], pair_index [P] (int64, values i·n + j) → [B, P]: ⟨S_i, S_j⟩ per row.

    Under autocast (bf16 training) autograd's own backward runs: there the forward's `bmm`
    casts its inputs, and the backward must see the casts to multiply in the same precision."""
    if (
        torch.is_grad_enabled()
        and stacked.requires_grad
        and not torch.is_autocast_enabled(stacked.device.type)
        and not capturing_graph()
    ):
        return _PairwiseDots.apply(stacked, pair_index)
    return all_dots(stacked).index_select(1, pair_index)


def all_dots(stacked: torch.Tensor) -> torch.Tensor:
    """stacked [B, n, d] → [B, n·n]: every ordered pair's dot product, row major."""
    return torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)


class _PairwiseDots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, stacked, pair_index):  # type: ignore[override]
        n = stacked.shape[1]
        ctx.save_for_backward(stacked, pair_index)
        ctx.n = n
        return all_dots(stacked).index_select(1, pair_index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pairs):  # type: ignore[override]
        stacked, pair_index = ctx.saved_tensors
        n = ctx.n
        mirrored = (pair_index % n) * n + pair_index // n  # (i, j) → (j, i)
        grad = grad_pairs.new_zeros(grad_pairs.shape[0], n * n)
        # index_add_, not index_copy_: a diagonal pair (i, i) lands twice, and its
        # derivative 2·g·S_i needs both.
        grad.index_add_(1, pair_index, grad_pairs).index_add_(1, mirrored, grad_pairs)
        return torch.bmm(grad.view(-1, n, n), stacked), None
