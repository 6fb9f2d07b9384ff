"""ShardedEmbeddingCollection: an EmbeddingCollection whose tables are sharded over the ranks.

Same inputs and outputs as `EmbeddingCollection` (pooled features, stacked groups, sequences),
so every model runs unchanged; per table the rows come from their owners through
`ShardedTable`, and in backward their gradients go back the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.distributed.sharded import ShardedGroup
from streamrec.embedding.collection import Embedded, EmbeddingCollection


class ShardedEmbeddingCollection(nn.Module):
    def __init__(
        self,
        local: EmbeddingCollection,
        group=None,  # noqa: ANN001
        exchange_dtype: torch.dtype = torch.float32,
        staleness: int = 0,
        gradient_group=None,  # noqa: ANN001
    ) -> None:
        super().__init__()
        self.local = local
        self.tables = local.tables  # this rank's shards (what checkpoints save)
        self.features = local.features
        self._groups = [
            ShardedGroup(plan.group.tables, group, exchange_dtype, staleness, gradient_group)
            for plan in local._plans
        ]

    def flush(self) -> None:
        """Apply the embedding gradients still in flight (hybrid mode)."""
        for g in self._groups:
            g.flush()

    @property
    def feature_order(self) -> list[str]:
        return self.local.feature_order

    def dim(self, feature: str) -> int:
        return self.local.dim(feature)

    def bytes_sent(self) -> int:
        return sum(g.bytes_sent for g in self._groups)

    def forward(self, batch: Batch) -> Embedded:
        out = Embedded()
        now = self.local.now  # set by RankingModel.set_event_time
        if now is None and batch.timestamps is not None and batch.timestamps.numel():
            now = float(batch.timestamps.max())
        device = batch.dense.device
        for plan, group in zip(self.local._plans, self._groups, strict=True):
            self._forward_group(plan, group, batch, now, device, out)
        return out

    def _forward_group(
        self,
        plan,
        group: ShardedGroup,
        batch: Batch,
        now,
        device,  # noqa: ANN001
        out: Embedded,
    ) -> None:
        parts = [batch.sparse[f] for f in plan.features]
        features_of = [np.flatnonzero(plan.table_index == t) for t in range(len(group.tables))]
        fids = [
            np.concatenate([parts[i].values.numpy() for i in idx])
            if idx.size
            else np.empty(0, np.int64)
            for idx in features_of
        ]
        w, inverses, routed = group.lookup(fids, now, self.training)
        inverse = torch.from_numpy(np.concatenate(inverses)).to(device)
        w = w.to(device)
        if self.training and torch.is_grad_enabled():
            w.requires_grad_(True)
            w.register_hook(lambda grad: group.apply_gradients(grad.detach().cpu(), routed))
        pooled = plan.pooling(w, inverse, parts, device)
        out.add_group(plan.features, pooled)
        out.sequences.update(plan.pooling.pad_sequences(w, inverse, parts, device))


def shard_collections(
    model: nn.Module,
    group=None,  # noqa: ANN001
    exchange_dtype: torch.dtype = torch.float32,
    staleness: int = 0,
    gradient_group=None,  # noqa: ANN001
) -> list[ShardedEmbeddingCollection]:
    """Replace every EmbeddingCollection inside `model` by a sharded one (in place)."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EmbeddingCollection):
                sharded = ShardedEmbeddingCollection(
                    child, group, exchange_dtype, staleness, gradient_group
                )
                setattr(parent, name, sharded)
                swapped.append(sharded)
    return swapped
