"""Blocks shared by the models: MLPs, the first-order (linear) term over sparse ids, FM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.tiered import build_table
from streamrec.models.onednn_linear import allowed as onednn_allowed
from streamrec.models.onednn_linear import applies as onednn_applies
from streamrec.models.onednn_linear import linear as onednn_linear
from streamrec.schema import Schema


class MLP(nn.Sequential):
    """Linear → ReLU (→ Dropout) per hidden size; `out` adds a final Linear without activation."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out: int | None = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))  # no second [B, h] tensor to write
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out is not None:
            layers.append(nn.Linear(in_dim, out))
            in_dim = out
        super().__init__(*layers)
        self.out_dim = in_dim
        # Read STREAMREC_DENSE_KERNEL now: a wrong value stops the model's build (a server's
        # start) with its reason, not every forward after a healthy start.
        onednn_allowed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """The layers from index `start` on, over x [B, width of layer `start`'s input]. A
        Linear and the ReLU after it run as one oneDNN call where `onednn_linear` applies
        (not while something hooks the ReLU: the health monitor reads its output)."""
        layers = list(self)
        i = start
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Linear) and onednn_applies(x, layer.weight):
                after = layers[i + 1] if i + 1 < len(layers) else None
                relu = isinstance(after, nn.ReLU) and not after._forward_hooks
                x = onednn_linear(x.contiguous(), layer, relu)
                i += 2 if relu else 1
            else:
                x = layer(x)
                i += 1
        return x


def linear_schema(schema: Schema) -> Schema:
    """The same embedding features, each reading a dim-1 table '<table>@linear' (FM / LR / wide
    first-order weights: one scalar per id)."""
    copy = schema.model_copy(deep=True)
    for f in copy.embeddings:
        f.table = f"{f.table_name}@linear"
        f.pooling = "sum"
    return copy


def linear_settings(linear_lr: float | None) -> dict[str, Any] | None:
    """A model's `linear_lr` parameter as LinearTerm settings (None: the tables' own lr)."""
    return None if linear_lr is None else {"lr": linear_lr}


class LinearTerm(nn.Module):
    """Σ over features and ids of a per-id scalar weight, + a linear map of the dense input.
    → [B, num_tasks]."""

    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        num_tasks: int,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """`settings`: TableConfig fields that replace the tables' own for the per-id weights
        (e.g. {"lr": 0.1}: one-hot weights see one id per row, so they often want a larger
        rate than the embeddings; LR's FTRL defaults). Width and initialisation are fixed:
        one scalar per id, starting at 0."""
        super().__init__()
        lin = linear_schema(schema)
        own = {}
        for name, cfg in tables.items():
            linear = (settings or {}) | {"dim": 1, "init_scale": 0.0, "rare_dim": None}
            own[f"{name}@linear"] = build_table(
                TableConfig.model_validate(cfg.model_dump() | linear), name=f"{name}@linear"
            )
        self.ids = EmbeddingCollection(lin, own) if schema.embeddings else None
        self.dense = nn.Linear(schema.dense_width, num_tasks) if schema.dense_width else None
        self.bias = nn.Parameter(torch.zeros(num_tasks))

    def logit_variance(self, batch: Batch) -> torch.Tensor:
        """[B]: the per-id weights' count-based variance (`id_variance`); dense columns and the
        bias add none."""
        if self.ids is None:
            return torch.zeros(batch.size)
        return id_variance(self.ids, batch)

    def forward(self, batch: Batch) -> torch.Tensor:
        out = self.bias.expand(batch.size, -1)
        if self.ids is not None:
            emb = self.ids(batch)
            total = sum(t.sum(dim=1) for _, t in emb.groups)  # [B, 1]
            out = out + total
        if self.dense is not None:
            out = out + self.dense(batch.dense)
        return out


def id_variance(collection: EmbeddingCollection, batch: Batch, scale: float = 1.0) -> torch.Tensor:
    """[B] float32: Σ over each row's ids of scale² / (1 + n), n the times training saw the id
    (`DynamicTable.counts_of`; 0 for an unknown id) — the count-based variance of a sum of
    per-id weights, each with prior variance 1 that every observation shrinks (BOPR, He et al.
    2014 §3; McMahan et al. 2013 §6). `scale`: the factor each id's weight enters the logit
    with (1/T for T mean-pooled ids)."""
    out = torch.zeros(batch.size, dtype=torch.float32)
    for name, feature in collection.features.items():
        ids = batch.sparse[name]
        if ids.values.numel() == 0:
            continue
        table = collection.tables[feature.table_name]
        counts = table.counts_of(ids.values.cpu().numpy())
        terms = torch.from_numpy((scale * scale / (1.0 + counts)).astype(np.float32))
        out.index_add_(0, ids.row_ids(), terms)
    return out


def fm_interaction(stacked: torch.Tensor) -> torch.Tensor:
    """Factorisation-machine second-order term: ½ Σ_d ((Σ_f v_fd)² − Σ_f v_fd²).
    stacked [B, F, dim] → [B, 1].

    Scoring (no gradient) writes it as ½ (‖Σ_f v_f‖² − ‖v‖²), two vector norms: a norm is one
    fused reduction, where `square()` writes a [B, F, dim] temporary first (8,192 rows × 26 ×
    16: 0.42 ms against 1.10; `streamrec predict` 1.07×). Training keeps the squares, whose
    backward is the cheaper one (the DeepFM step ran 0.98× with the norms). The two agree to
    float rounding."""
    if torch.is_grad_enabled() and stacked.requires_grad:
        together, apart = stacked.sum(dim=1).square(), stacked.square().sum(dim=1)
        return 0.5 * (together - apart).sum(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm
    together = norm(stacked.sum(dim=1), dim=1, keepdim=True).square()
    apart = norm(stacked.flatten(1), dim=1, keepdim=True).square()
    return 0.5 * (together - apart)
