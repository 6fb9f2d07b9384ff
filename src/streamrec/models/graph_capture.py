"""Whether torch is capturing a graph: tracing, scripting, compiling or exporting to ONNX.

Why: the models' own kernels (`onednn_linear`, `pairwise_dots`) are eager-mode speed-ups. A
captured graph must hold the standard aten ops instead — ONNX and TorchScript cannot hold a
Python autograd function or `mkldnn::_linear_pointwise`, and `torch.compile` fuses its own — so
each kernel steps aside while this is true.
"""

from __future__ import annotations

import torch


def capturing_graph() -> bool:
    """True inside `torch.jit.trace`/`script`, `torch.compile` or an ONNX export."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )
