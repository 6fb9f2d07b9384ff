"""DLRM's pairwise dot products: torch's values, and a one-`bmm` backward equal to autograd's."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.models.pairwise_dots import pairwise_dots


def reference(stacked: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    return torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1).index_select(1, pair_index)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    nodes=st.integers(1, 9),
    dim=st.integers(1, 12),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_values_and_gradient_equal_autograds_for_any_pairs(
    rows: int, nodes: int, dim: int, data: st.DataObject, seed: int
) -> None:
    """Any pairs — upper or lower triangle, the diagonal, repeats — as DLRM's triangle is one
    case of them."""
    flat = data.draw(st.lists(st.integers(0, nodes * nodes - 1), min_size=1, max_size=30))
    pair_index = torch.tensor(flat, dtype=torch.int64)
    torch.manual_seed(seed)
    stacked = torch.randn(rows, nodes, dim, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(rows, len(flat), dtype=torch.float64)

    ours = pairwise_dots(stacked, pair_index)
    (got_grad,) = torch.autograd.grad(ours, stacked, upstream)
    theirs = reference(stacked, pair_index)
    (want_grad,) = torch.autograd.grad(theirs, stacked, upstream)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(got_grad, want_grad)


def test_the_dlrm_triangle_in_fp32_matches_to_float_rounding() -> None:
    n, dim = 27, 16
    pairs = torch.triu_indices(n, n, offset=1)
    pair_index = pairs[0] * n + pairs[1]
    torch.manual_seed(0)
    stacked = torch.randn(2048, n, dim, requires_grad=True)
    upstream = torch.randn(2048, pair_index.numel())
    (got,) = torch.autograd.grad(pairwise_dots(stacked, pair_index), stacked, upstream)
    (want,) = torch.autograd.grad(reference(stacked, pair_index), stacked, upstream)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_captured_graph_holds_torchs_ops() -> None:
    """Tracing (ONNX export, TorchScript) must see bmm + index_select, not a Python function."""
    pair_index = torch.tensor([1, 2, 5])
    stacked = torch.randn(4, 3, 2, requires_grad=True)
    graph = str(
        torch.jit.trace(lambda s: pairwise_dots(s, pair_index), stacked).inlined_graph
    )
    assert "aten::bmm" in graph and "PythonOp" not in graph


def test_under_bf16_autocast_the_gradient_is_autograds_own() -> None:
    """bf16 training: the forward's bmm runs in bf16, and so must the backward's."""
    n = 5
    pairs = torch.triu_indices(n, n, offset=1)
    pair_index = pairs[0] * n + pairs[1]
    torch.manual_seed(1)
    stacked = torch.randn(64, n, 8, requires_grad=True)
    upstream = torch.randn(64, pair_index.numel())
    with torch.autocast("cpu", torch.bfloat16):
        ours = pairwise_dots(stacked, pair_index)
        theirs = reference(stacked, pair_index)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    (got,) = torch.autograd.grad(ours, stacked, upstream.bfloat16())
    (want,) = torch.autograd.grad(theirs, stacked, upstream.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
