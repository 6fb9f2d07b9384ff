"""The layers' closed forms against their definitions."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.models.layers import fm_interaction


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 20),
    features=st.integers(1, 8),
    dim=st.integers(1, 9),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_the_fm_term_is_the_sum_of_every_pairs_dot_product(
    rows: int, features: int, dim: int, scale: float, seed: int
) -> None:
    """Training's and scoring's forms both equal Σ_{i<j} ⟨v_i, v_j⟩ (Rendle 2010, eq. 1), and
    the gradient is finite where a row's vectors are all zero (unseen ids start at zero)."""
    torch.manual_seed(seed)
    stacked = (scale * torch.randn(rows, features, dim)).requires_grad_()
    got = fm_interaction(stacked)
    exact = stacked.detach().double()
    pairs = torch.triu_indices(features, features, offset=1)
    want = (exact[:, pairs[0]] * exact[:, pairs[1]]).sum(dim=(1, 2)).unsqueeze(1)
    with torch.no_grad():  # scoring's form: two vector norms
        scored = fm_interaction(stacked)
    assert got.shape == scored.shape == (rows, 1)
    magnitude = float(exact.square().sum(dim=(1, 2)).max()) + 1e-30
    for form in (got, scored):
        torch.testing.assert_close(form.double(), want, rtol=1e-5, atol=1e-6 * magnitude)
    got.sum().backward()
    assert bool(torch.isfinite(stacked.grad).all())
    # d/dv_i Σ_{i<j} ⟨v_i, v_j⟩ = Σ_{j≠i} v_j
    want_grad = exact.sum(dim=1, keepdim=True) - exact
    torch.testing.assert_close(stacked.grad.double(), want_grad, rtol=1e-5,
                               atol=1e-6 * (magnitude ** 0.5 + 1.0))
