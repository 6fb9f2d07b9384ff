"""SparseOptimizer: the embedding half of an optimizer step, the way torch.optim is the dense half.

Backward changes no embedding row: each EmbeddingCollection keeps its groups' row gradients
(unique rows [U, dim]) until the step, so a training loop can look at them first —

    loss.backward()                                  # rows unchanged
    norm = clip_grad_norm_(model, 1.0, sparse)       # one global norm, embeddings included
    if torch.isfinite(norm):                         # a NaN never reaches a table
        sparse.step(examples=batch_size); dense.step()
    sparse.zero_grad(); dense.zero_grad()

— and gradients of several micro-batches accumulate (summed per row) until `step()`. The math of
each table's update is its row optimizer (its `TableConfig`), as before (Persia's
`TrainCtx.backward` + `_check_finite`, TorchRec's fused optimizer made explicit).

FTRL-Proximal's β, λ1 and λ2 are defined on per-example gradients (McMahan et al. 2013 update
one example at a time), while a batch-mean loss gives row gradients ∝ 1/B: with the same
settings, a batch of 256 would be regularised 256× harder than the paper's. `step(examples)`
therefore hands FTRL tables the gradient of the summed loss (the batch-mean gradient × the
number of terms the loss averaged over), so their settings mean the same at any batch size.
The other rules see the batch-mean gradient unchanged (Adagrad and Adam are scale-free; SGD's lr
stays a per-batch-mean rate, as torch's).
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.embedding.collection import EmbeddingCollection


class SparseOptimizer:
    def __init__(self, model: nn.Module) -> None:
        self.collections = [m for m in model.modules() if isinstance(m, EmbeddingCollection)]

    def gradients(self) -> list[torch.Tensor]:
        """The row gradients waiting for the step, [U, dim] each (backward's own tensors:
        scaling them in place scales what `step` applies)."""
        return [g.grad for c in self.collections for g in c.row_gradients]

    def step(self, examples: int) -> None:
        """Apply every waiting row gradient with its table's row optimizer, then forget it.

        examples: how many terms the loss averaged over since the last step (batch size ×
        tasks, summed over accumulated micro-batches; under torchrun, this rank's terms × the
        world size, since the exchange averages over ranks). FTRL tables scale their gradient
        by it (module docstring)."""
        for collection in self.collections:
            for pending in collection.row_gradients:
                if pending.lookup.tables[0].optimizer.name == "ftrl":
                    pending.grad.mul_(examples)
            collection.apply_row_gradients()

    def zero_grad(self) -> None:
        """Forget the waiting row gradients (a skipped step)."""
        for collection in self.collections:
            collection.row_gradients = []


def clip_grad_norm_(
    model: nn.Module, max_norm: float | None, sparse: SparseOptimizer
) -> torch.Tensor:
    """The global L2 norm of every gradient — dense parameters and waiting row gradients
    together — and, with `max_norm`, all of them scaled down so that it is at most max_norm.
    → the norm before clipping (inf or nan when a gradient is not finite)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None] + sparse.gradients()
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm is not None:
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            for g in grads:
                g.mul_(coef)
    return norm
