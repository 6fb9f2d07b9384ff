"""fp32 Linear (+ ReLU) layers through oneDNN's matmul on x86 CPUs, BLAS for the weight grad.

Why: torch's CPU `nn.Linear` calls MKL's sgemm, and MKL picks slower kernels on CPUs it does
not recognise (AMD's: no AVX-512 path). torch ships oneDNN too, whose kernels are chosen by
the instruction set alone. Measured on this project's 2-core AMD EPYC (`benchmarks/RESULTS.md`,
"End-to-end training" and "Batch scoring"): the forward `x Wᵀ` and the input gradient `gY W`
take 0.36–0.82× MKL's time at the DLRM and DeepFM shapes of 2,048–8,192 rows; MKL stays the
faster for the weight gradient `gYᵀ X` (oneDNN would need both operands transposed first), so
that one stays on BLAS. The ReLU after a layer runs inside oneDNN's output stage, so the
activation is written once.

Where: oneDNN builds (JIT-compiles) a kernel for each input shape and caches it; a new row
count costs ~0.5 ms the first time (measured: batches of 50–2,000 varying rows ran 1.8× BLAS's
time on the first pass, 1.0× once cached). So it runs where a shape repeats — a training step
(grad enabled: the batch size is fixed) and batch scoring (`repeated_shapes()`, raised by
`predict_rows`, whose calls are `FORWARD_ROWS` rows) — and only from `MIN_ROWS` rows up (below,
one oneDNN call costs 10–15 µs more than BLAS). The server's batches, whose row counts vary
with the load, keep BLAS: there oneDNN cost 19% more CPU a `/v1/rank` request.

When: only where the result is the same math in the same precision and nothing else has to see
the ops — fp32 CPU tensors, autocast off (bf16 autocast already runs oneDNN), not while
tracing, exporting or compiling (ONNX and `torch.compile` must see `aten::linear`), and on x86
only (on other CPUs torch's oneDNN may lack tuned kernels; BLAS is the safe choice there). The
choice depends on the machine and the call, never on timing, so a run repeats bit for bit on
one machine. Results differ from MKL's by float rounding (~1e-6 relative).

`STREAMREC_DENSE_KERNEL=blas` turns it off (a kernel bug to rule out, a CPU where it is slower).
"""

from __future__ import annotations

import functools
import os
import platform
from contextlib import AbstractContextManager

import torch
from torch import nn

from streamrec.models.graph_capture import capturing_graph
from streamrec.thread_flag import ThreadFlag

KERNEL_ENV = "STREAMREC_DENSE_KERNEL"
MIN_ROWS = 512
"""Rows from which a call takes oneDNN: at 100 rows it cost 1.12–1.16× BLAS's time, at 300 the
same, at 1,000 0.92–0.95× (one thread); at 2,048 (two threads) 0.55–0.78×."""

_repeated = ThreadFlag()


def repeated_shapes() -> AbstractContextManager[None]:
    """Within this block (on this thread), inference calls take oneDNN too: the caller's calls
    repeat one shape, so each kernel is built once (see the module docstring)."""
    return _repeated.raised()


@functools.cache
def allowed() -> bool:
    """This machine and `STREAMREC_DENSE_KERNEL` (auto | onednn | blas) allow oneDNN; read once
    a process."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower()
    if choice not in ("auto", "onednn", "blas"):
        raise ValueError(f"{KERNEL_ENV}={choice!r}: use auto, onednn or blas")
    if choice == "blas" or not torch.backends.mkldnn.is_available():
        return False
    if choice == "onednn":
        return True
    return platform.machine().lower() in ("x86_64", "amd64")


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` would take oneDNN for input `x` and this weight (see the module
    docstring for why each condition)."""
    return (
        allowed()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] >= MIN_ROWS
        and (torch.is_grad_enabled() or bool(_repeated))
        and not torch.is_autocast_enabled("cpu")
        and not capturing_graph()
    )


def _matmul(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """x [M, K] · w [N, K]ᵀ (+ b [N]) (→ ReLU) → [M, N], in oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu" if relu else "none", [], "")


def weight_grad(grad_y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """gYᵀ X: grad_y [M, N], x [M, K] → [N, K], on BLAS (faster than oneDNN here).

    MKL runs `gYᵀ X` 1.2–4× slower for a narrow input that is not a multiple of 16 floats
    wide, its vector width — 1 < K < 32, such as DLRM's 13 dense inputs. There `(Xᵀ gY)ᵀ`,
    with K on the row side, plus a copy of the small [N, K] result is faster (N 128–512,
    512–8,192 rows: K 2–12 0.25–0.86×, K 13 0.53–0.63×, K 20–31 0.62–1.02×). At K = 1, at
    multiples of 16 and from 32 up it is 0.94–1.3×, so those keep the direct form. Same
    products, summed in another order."""
    width = x.shape[1]
    if 1 < width < 32 and width % 16:
        return x.t().mm(grad_y).t().contiguous()
    return grad_y.t().mm(x)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, relu):  # type: ignore[override]
        y = _matmul(x, weight, bias, relu)
        # A ReLU's gradient mask is its output's sign; the output is the next layer's saved
        # input anyway, so keeping it costs no memory.
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.relu = relu
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, weight, y = ctx.saved_tensors
        if ctx.relu:  # the op autograd runs for a ReLU: one pass, no mask tensor
            grad_y = torch.ops.aten.threshold_backward(grad_y, y, 0.0)
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        # oneDNN reads the transposed view in place: no copy of the weight.
        grad_x = _matmul(grad_y, weight.t(), None, False) if need_x else None
        grad_w = weight_grad(grad_y, x) if need_w else None
        grad_b = grad_y.sum(0) if need_b else None
        return grad_x, grad_w, grad_b, None


def linear(x: torch.Tensor, layer: nn.Linear, relu: bool = False) -> torch.Tensor:
    """`layer(x)`, then ReLU if `relu` — through oneDNN where `applies`, else torch's own ops.
    x [M, in] → [M, out]."""
    if not applies(x, layer.weight):
        y = layer(x)
        return torch.relu(y) if relu else y
    if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
        return _Linear.apply(x, layer.weight, layer.bias, relu)
    return _matmul(x, layer.weight, layer.bias, relu)
