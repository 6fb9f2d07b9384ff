"""The CPU pooling kernel against the GPU path (embedding_bag + index_add), run on CPU."""

import numpy as np
import pytest
import torch

from streamrec.batch import JaggedIds
from streamrec.embedding.pooling import FeaturePooling, pool_row_major
from streamrec.schema import EmbeddingFeature


def _lengths(rng: np.random.Generator, bags: str, batch: int) -> np.ndarray:
    if bags == "mixed":  # empty, one-id and multi-id bags
        return rng.integers(0, 4, batch)
    lengths = np.ones(batch, np.int64)  # single-valued: the kernels' gather path
    if bags == "mostly_single":  # a few blocks of 64 rows fall back to the general path
        lengths[rng.choice(batch, 3, replace=False)] = rng.choice([0, 2], 3)
    return lengths


@pytest.mark.parametrize("bags", ["mixed", "single", "mostly_single"])
@pytest.mark.parametrize("exclusive", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_cpu_pooling_kernel_matches_the_row_major_embedding_bag_path(exclusive, weighted, bags):
    """The CPU kernel (ids read feature after feature, backward split between threads when
    features own their rows) against the GPU path's embedding_bag + index_add, run on CPU."""
    rng = np.random.default_rng(0)
    batch, n_features, dim, n_rows = 300, 5, 8, 40
    parts, inverse = [], []
    for i in range(n_features):
        lengths = _lengths(rng, bags, batch)
        n = int(lengths.sum())
        weights = torch.from_numpy(rng.random(n, dtype=np.float32)) if weighted else None
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        parts.append(JaggedIds(torch.zeros(n, dtype=torch.int64), offsets, weights))
        # Distinct tables own distinct rows of W (each table's unique ids); a shared one, all.
        lo = i * n_rows // n_features if exclusive else 0
        hi = (i + 1) * n_rows // n_features if exclusive else n_rows
        inverse.append(rng.integers(lo, hi, n))
    inverse_t = torch.from_numpy(np.concatenate(inverse))
    features = [
        EmbeddingFeature(name=f"f{i}", table=f"t{i}" if exclusive else "shared")
        for i in range(n_features)
    ]
    w_ours = torch.randn(n_rows, dim, requires_grad=True)
    w_ref = w_ours.detach().clone().requires_grad_(True)
    ours = FeaturePooling(features)(w_ours, inverse_t, parts, torch.device("cpu"))
    ref = pool_row_major(
        w_ref,
        inverse_t,
        torch.stack([p.offsets for p in parts]),
        torch.cat([p.weights for p in parts]) if weighted else None,
        torch.device("cpu"),
    ).view(batch, n_features, dim)
    assert torch.allclose(ours, ref, atol=1e-6)
    upstream = torch.randn(batch, n_features, dim)
    (ours * upstream).sum().backward(retain_graph=True)
    (ref * upstream).sum().backward(retain_graph=True)
    assert torch.allclose(w_ours.grad, w_ref.grad, atol=1e-5)
    w_ours.grad, w_ref.grad = None, None
    ours.sum().backward(retain_graph=True)  # a sum's gradient arrives expanded (strides 0)
    ref.sum().backward(retain_graph=True)
    assert torch.allclose(w_ours.grad, w_ref.grad, atol=1e-5)

    # Gradients below sum up to 300 × 3 random terms per row, in another order than the
    # reference's index_add: float32 leaves ~1e-5 absolute error even where the sum is small.
    # A gradient whose last dimension is not contiguous (transposed) is read correctly too
    upstream_t = torch.randn(dim, n_features, batch).permute(2, 1, 0)
    (g_ours,) = torch.autograd.grad(ours, w_ours, upstream_t, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, w_ref, upstream_t.contiguous(), retain_graph=True)
    assert torch.allclose(g_ours, g_ref, atol=1e-4)
    # …and one broadcast along the batch only (strides (0, dim, 1))
    upstream_b = torch.randn(1, n_features, dim).expand(batch, n_features, dim)
    (g_ours,) = torch.autograd.grad(ours, w_ours, upstream_b)
    (g_ref,) = torch.autograd.grad(ref, w_ref, upstream_b.contiguous())
    assert torch.allclose(g_ours, g_ref, atol=1e-4)


@pytest.mark.parametrize("weighted", [True, False])
def test_inference_pooling_is_the_training_pooling_to_the_bit(weighted):
    """Serving pools without autograd, in numpy (`_pool_for_inference`): the same numbers as
    the autograd path, for sum, mean and sqrtn bags, empty bags and per-id weights."""
    rng = np.random.default_rng(1)
    batch, dim, n_rows = 200, 8, 50
    features = [
        EmbeddingFeature(name="s", pooling="sum"),
        EmbeddingFeature(name="m", pooling="mean"),
        EmbeddingFeature(name="q", pooling="sqrtn"),
    ]
    parts, inverse = [], []
    for _ in features:
        lengths = _lengths(rng, "mixed", batch)
        n = int(lengths.sum())
        w = torch.from_numpy(rng.random(n, dtype=np.float32)) if weighted else None
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        parts.append(JaggedIds(torch.zeros(n, dtype=torch.int64), offsets, w))
        inverse.append(rng.integers(0, n_rows, n))
    inverse_t = torch.from_numpy(np.concatenate(inverse))
    pooling = FeaturePooling(features)
    weights = torch.randn(n_rows, dim, requires_grad=True)
    trained = pooling(weights, inverse_t, parts, torch.device("cpu"))
    with torch.inference_mode():
        served = pooling(weights.detach(), inverse_t, parts, torch.device("cpu"))
    assert trained.requires_grad and not served.requires_grad
    assert torch.equal(served, trained.detach())
