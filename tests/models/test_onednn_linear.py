"""oneDNN Linear (+ ReLU): the same values and gradients as torch's own layers, and torch's
own ops wherever another consumer must see them (autocast, tracing, hooks, other CPUs)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from streamrec.models import onednn_linear
from streamrec.models.layers import MLP

needs_onednn = pytest.mark.skipif(
    not onednn_linear.allowed(), reason="oneDNN is not used on this machine (not x86, or off)"
)


def reference(x: torch.Tensor, layer: nn.Linear, relu: bool) -> torch.Tensor:
    y = torch.nn.functional.linear(x, layer.weight, layer.bias)
    return torch.relu(y) if relu else y


@needs_onednn
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(onednn_linear.MIN_ROWS, onednn_linear.MIN_ROWS + 300),
    width_in=st.integers(1, 70),
    width_out=st.integers(1, 70),
    relu=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_values_and_all_three_gradients_equal_torchs_linear(
    rows: int, width_in: int, width_out: int, relu: bool, bias: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = nn.Linear(width_in, width_out, bias=bias)
    x = torch.randn(rows, width_in, requires_grad=True)
    upstream = torch.randn(rows, width_out)

    ours = onednn_linear.linear(x, layer, relu)
    ours.backward(upstream)
    got = [ours.detach(), x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    x.grad = None
    layer.zero_grad()
    theirs = reference(x, layer, relu)
    theirs.backward(upstream)
    want = [theirs.detach(), x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    for a, b in zip(got, want, strict=True):
        # A sum of `rows` products rounds by ~1e-7 of its terms' size, not of its result:
        # a weight gradient near zero made of terms ~20 differs by ~1e-5 with another order.
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


@needs_onednn
def test_the_fast_path_is_taken_for_fp32_cpu_and_not_where_others_must_see_aten_ops() -> None:
    layer = nn.Linear(8, 4)
    rows = onednn_linear.MIN_ROWS
    x = torch.randn(rows, 8)
    assert onednn_linear.applies(x, layer.weight)  # grad enabled: a training step
    assert not onednn_linear.applies(x[: rows - 1], layer.weight)  # too few rows to pay
    assert not onednn_linear.applies(x.double(), layer.weight)
    assert not onednn_linear.applies(x[None], layer.weight)  # 3-d input: torch's linear
    with torch.inference_mode():  # the server's batches: row counts vary, kernels are per shape
        assert not onednn_linear.applies(x, layer.weight)
        with onednn_linear.repeated_shapes():  # batch scoring's fixed chunks
            assert onednn_linear.applies(x, layer.weight)
    with torch.autocast("cpu", torch.bfloat16):  # autocast already runs oneDNN in bf16
        assert not onednn_linear.applies(x, layer.weight)
        assert MLP(8, [4])(x).dtype == torch.bfloat16  # autocast still applies to the MLP
    # ONNX export traces the model: the graph must hold aten::linear, not a oneDNN call.
    graph = str(torch.jit.trace(MLP(8, [4], out=1), x, check_trace=False).inlined_graph)
    assert "aten::linear" in graph and "mkldnn" not in graph


def test_the_environment_chooses_and_a_wrong_value_is_refused(monkeypatch) -> None:
    onednn_linear.allowed.cache_clear()
    try:
        monkeypatch.setenv(onednn_linear.KERNEL_ENV, "blas")
        assert not onednn_linear.allowed()
        onednn_linear.allowed.cache_clear()
        monkeypatch.setenv(onednn_linear.KERNEL_ENV, "fastest")
        with pytest.raises(ValueError, match="STREAMREC_DENSE_KERNEL='fastest'"):
            onednn_linear.allowed()
        # Refused when a model is built (a server's start), not at its first request.
        with pytest.raises(ValueError, match="STREAMREC_DENSE_KERNEL='fastest'"):
            MLP(4, [3])
    finally:
        monkeypatch.delenv(onednn_linear.KERNEL_ENV)
        onednn_linear.allowed.cache_clear()
    onednn_linear.allowed()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_an_mlp_computes_what_its_layers_compute_one_by_one(train: bool, batch_norm: bool) -> None:
    torch.manual_seed(0)
    mlp = MLP(13, [32, 16], out=2, batch_norm=batch_norm).train(train)
    x = torch.randn(onednn_linear.MIN_ROWS + 5, 13)
    step_by_step = x
    with torch.no_grad():
        for layer in mlp:
            step_by_step = layer(step_by_step.clone())
    with onednn_linear.repeated_shapes(), torch.no_grad():
        torch.testing.assert_close(mlp(x), step_by_step, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mlp.forward_from(mlp[0](x), 1), step_by_step,
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlp(x).detach(), step_by_step, rtol=1e-5, atol=1e-5)  # grad on


def test_a_hooked_relu_still_sees_its_output() -> None:
    """The health monitor hooks every ReLU to count dead units: the fused pair must not hide
    the activation from it."""
    torch.manual_seed(0)
    mlp = MLP(6, [5], out=1)
    outputs: list[torch.Tensor] = []
    handle = mlp[1].register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    x = torch.randn(onednn_linear.MIN_ROWS, 6)
    mlp(x)
    handle.remove()
    assert len(outputs) == 1
    torch.testing.assert_close(outputs[0], torch.relu(mlp[0](x)).detach())


@pytest.mark.parametrize("width_in", [1, 13, 16, 20, 64, 367])
def test_the_weight_gradient_is_gy_t_x_in_either_order_of_operands(width_in: int) -> None:
    """Both forms of `weight_grad` (narrow K or not) give gYᵀ X, contiguous."""
    torch.manual_seed(width_in)
    grad_y, x = torch.randn(600, 24), torch.randn(600, width_in)
    got = onednn_linear.weight_grad(grad_y, x)
    assert got.shape == (24, width_in) and got.is_contiguous()
    exact = grad_y.double().t().mm(x.double())
    # fp32 sums of 600 products ~1 round by ~1e-5 absolute; a wrong operand is off by ~10.
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-4)
