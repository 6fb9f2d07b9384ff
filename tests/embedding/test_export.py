import torch

from streamrec.embedding import DynamicTable
from streamrec.embedding.export import export_rows, memory_report, quantize


def test_fp16_and_int8_round_trip_within_their_precision():
    w = torch.randn(100, 32)
    fids = torch.arange(100)
    for precision, tol in (("fp32", 0.0), ("fp16", 2e-3), ("int8", None)):
        rows = quantize(fids, w, precision)
        err = (rows.dequantize() - w).abs().max().item()
        bound = tol if tol is not None else float(((w.max(1).values - w.min(1).values) / 255).max())
        assert err <= bound + 1e-6, precision
    assert (
        quantize(fids, w, "int8").nbytes()
        < quantize(fids, w, "fp16").nbytes()
        < (quantize(fids, w, "fp32").nbytes())
    )


def test_export_drops_rows_that_ftrl_zeroed():
    t = DynamicTable(dim=4, optimizer="ftrl", lr=0.1, ftrl_l1=5.0)
    t.lookup(torch.arange(10), now=0)
    t.apply_gradients(torch.arange(5), torch.full((5, 4), 0.1))  # these become exactly 0
    kept = export_rows(t, "fp16", drop_zero_rows=True)
    assert sorted(kept.fids.tolist()) == [5, 6, 7, 8, 9]
    assert len(export_rows(t).fids) == 10
    wide = DynamicTable(dim=32)
    wide.lookup(torch.arange(10), now=0)
    report = memory_report(wide)
    assert report["int8"] < report["fp16"] < report["fp32"]
