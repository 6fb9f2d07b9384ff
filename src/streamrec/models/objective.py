"""What a model trains on: the loss of one forward pass, the same for every training path.

The Trainer (offline epochs, online stream, torchrun ranks) runs `output = model(batch)` — through
a DDP wrapper where there is one — and asks the model for `model.objective(output, batch)`: the
loss, how many terms it averages over (FTRL rows scale by it) and, for models that predict a
label, the scores and labels a running AUC is read from. Rankers use `binary_objective`; the
two-tower retriever its sampled softmax (`models/two_tower.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamrec.batch import Batch


@dataclass
class Objective:
    """loss: scalar; terms: how many examples × tasks the mean is over (0: an empty batch);
    scores / labels: [B] first-task logits and labels for a running AUC, or None (no labels)."""

    loss: torch.Tensor
    terms: int
    scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def binary_objective(logits: torch.Tensor, batch: Batch) -> Objective:
    """BCE averaged over rows and tasks; logits [B, T]. Soft targets (`batch.targets`,
    distillation) replace the labels in the loss, never in the metrics."""
    logits = logits.float()
    if not batch.size:  # a rank's empty share of a tiny global batch: still joins the exchanges
        return Objective(logits.sum() * 0.0, 0)
    target = batch.labels if batch.targets is None else batch.targets
    loss = F.binary_cross_entropy_with_logits(logits, target[:, : logits.shape[1]])
    return Objective(loss, logits.numel(), logits.detach()[:, 0], batch.labels[:, 0])
