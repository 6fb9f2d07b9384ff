"""Each row optimizer against a straightforward dense reference over several steps.

The table sees only rows with a gradient in a step (lazy updates), so the reference is run on
a dense matrix where rows without a gradient are left alone too.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding import DynamicTable

DIM = 4
LR = 0.1


def _reference_step(name, w, state, g, touched, t):
    """Dense numpy reference; w [V, DIM], g [V, DIM] summed grads, touched bool [V]."""
    for r in np.flatnonzero(touched):
        if name == "sgd":
            w[r] -= LR * g[r]
        elif name == "adagrad":
            state["G"][r] += g[r] ** 2
            w[r] -= LR * g[r] / (np.sqrt(state["G"][r]) + 1e-8)
        elif name == "rowwise_adagrad":
            state["G"][r, 0] += np.mean(g[r] ** 2)
            w[r] -= LR * g[r] / (np.sqrt(state["G"][r, 0]) + 1e-8)
        elif name == "adam":
            t[r] += 1
            state["m"][r] = 0.9 * state["m"][r] + 0.1 * g[r]
            state["v"][r] = 0.999 * state["v"][r] + 0.001 * g[r] ** 2
            m_hat = state["m"][r] / (1 - 0.9 ** t[r])
            v_hat = state["v"][r] / (1 - 0.999 ** t[r])
            w[r] -= LR * m_hat / (np.sqrt(v_hat) + 1e-8)
        elif name == "ftrl":
            l1, l2, beta = 0.05, 0.01, 1.0
            for j in range(DIM):
                n_old = state["n"][r, j]
                sigma = (np.sqrt(n_old + g[r, j] ** 2) - np.sqrt(n_old)) / LR
                state["z"][r, j] += g[r, j] - sigma * w[r, j]
                state["n"][r, j] = n_old + g[r, j] ** 2
                z = state["z"][r, j]
                if abs(z) <= l1:
                    w[r, j] = 0.0
                else:
                    w[r, j] = -(z - np.sign(z) * l1) / (
                        (beta + np.sqrt(state["n"][r, j])) / LR + l2
                    )


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]),
    st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=8), min_size=1, max_size=5),
    st.integers(0, 2**31),
)
def test_optimizer_matches_dense_reference(name, steps, seed):
    table = DynamicTable(dim=DIM, optimizer=name, lr=LR, ftrl_l1=0.05, ftrl_l2=0.01)
    vocab = torch.arange(6, dtype=torch.int64)
    w = table.lookup(vocab, now=0).numpy().astype(np.float64)
    state = {k: np.zeros((6, DIM)) for k in ("G", "m", "v", "z", "n")}
    t = np.zeros(6)
    rng = np.random.default_rng(seed)
    for ids in steps:
        grads = rng.normal(size=(len(ids), DIM))
        table.apply_gradients(torch.tensor(ids), torch.tensor(grads, dtype=torch.float32))
        g = np.zeros((6, DIM))
        np.add.at(g, ids, grads.astype(np.float32).astype(np.float64))
        touched = np.zeros(6, bool)
        touched[ids] = True
        _reference_step(name, w, state, g, touched, t)
    got = table.lookup(vocab, now=0, insert=False).numpy()
    np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-5)


def test_ftrl_l1_makes_rows_exactly_zero():
    table = DynamicTable(dim=DIM, optimizer="ftrl", lr=0.1, ftrl_l1=10.0)
    ids = torch.arange(3, dtype=torch.int64)
    table.lookup(ids, now=0)
    table.apply_gradients(ids, torch.full((3, DIM), 0.5))
    assert torch.count_nonzero(table.lookup(ids, insert=False)) == 0


def test_adagrad_matches_torch_optim_adagrad():
    table = DynamicTable(dim=DIM, optimizer="adagrad", lr=LR, eps=1e-10)
    ids = torch.tensor([0, 1, 2])
    p = torch.nn.Parameter(table.lookup(ids, now=0).clone())
    opt = torch.optim.Adagrad([p], lr=LR, eps=1e-10)
    for _ in range(3):
        g = torch.randn(3, DIM)
        table.apply_gradients(ids, g)
        p.grad = g
        opt.step()
    assert torch.allclose(table.lookup(ids, insert=False), p.detach(), atol=1e-6)
    with pytest.raises(ValueError):
        DynamicTable(optimizer="adamw")


def test_a_large_step_split_between_threads_matches_the_reference():
    """10,000 rows (above the parallel threshold): each thread updates its own range; every
    row gets exactly one row-wise Adagrad step and is stamped with the new version."""
    n = 10_000
    table = DynamicTable(dim=DIM, optimizer="rowwise_adagrad", lr=LR)
    ids = torch.arange(n, dtype=torch.int64) * 7
    w = table.lookup(ids, now=0).numpy().astype(np.float64)
    version = table.version
    grads = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    table.apply_gradients(ids, torch.from_numpy(grads))
    g = grads.astype(np.float64)
    expected = w - LR * g / (np.sqrt(np.mean(g**2, axis=1, keepdims=True)) + 1e-8)
    np.testing.assert_allclose(table.lookup(ids, insert=False).numpy(), expected, atol=2e-5)
    changed, _ = table.changed_since(version)
    assert np.array_equal(np.sort(changed.numpy()), ids.numpy())
