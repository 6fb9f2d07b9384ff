"""Rows for serving: a table's live rows as (fids, values) in fp32, fp16 or row-wise int8.

Serving needs only weights — no optimizer state or metadata — and tolerates reduced precision:
fp16 halves the bytes, row-wise int8 (one fp32 scale and offset per row) quarters them for
dim ≥ 32. FTRL with L1 leaves rows that are exactly zero; `drop_zero_rows` omits them (a missing
fid reads the default zero row at serving, so nothing changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamrec.embedding.quantized_rows import quantize as quantize_rows
from streamrec.embedding.table import DynamicTable

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportedRows:
    """fids int64 [n]; values [n, dim] (float32 / float16 / uint8); for int8 also
    scale and offset float32 [n] with row = values · scale + offset."""

    fids: torch.Tensor
    values: torch.Tensor
    precision: str
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        """float32 [n, dim]."""
        if self.precision == "int8":
            return self.values.float() * self.scale[:, None] + self.offset[:, None]
        return self.values.float()

    def nbytes(self) -> int:
        extra = 0 if self.scale is None else self.scale.numel() * 8
        return self.fids.numel() * 8 + self.values.numel() * self.values.element_size() + extra

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"fids": self.fids, "values": self.values}
        if self.scale is not None:
            out["scale"], out["offset"] = self.scale, self.offset
        return out


def quantize(fids: torch.Tensor, weights: torch.Tensor, precision: str = "fp32") -> ExportedRows:
    """weights float32 [n, dim] → ExportedRows in `precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return ExportedRows(fids, weights.float().contiguous(), precision)
    if precision == "fp16":
        return ExportedRows(fids, weights.half().contiguous(), precision)
    codes, params = quantize_rows(weights.float().numpy(), "int8")  # a served table's encoding
    params_t = torch.from_numpy(params)
    return ExportedRows(
        fids, torch.from_numpy(codes), precision, params_t[:, 0].clone(), params_t[:, 1].clone()
    )


def export_rows(
    table: DynamicTable, precision: str = "fp32", drop_zero_rows: bool = False
) -> ExportedRows:
    rows = table.live_rows()
    fids = torch.from_numpy(table._fid.gather(rows)[:, 0].copy())
    weights = torch.from_numpy(table.gather_rows(rows))
    if drop_zero_rows and weights.numel():
        keep = weights.abs().sum(dim=1) > 0
        fids, weights = fids[keep], weights[keep]
    return quantize(fids, weights, precision)


def memory_report(table: DynamicTable) -> dict[str, int]:
    """Bytes of the live rows' weights at each serving precision (fids included)."""
    n, dim = len(table), table.dim
    return {"fp32": n * (8 + 4 * dim), "fp16": n * (8 + 2 * dim), "int8": n * (8 + dim + 8)}
