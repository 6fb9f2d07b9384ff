"""Fewer-bit rows: the encoding's error bound, and a served table that holds them."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from streamrec.embedding import DynamicTable
from streamrec.embedding.grouped import TableGroup
from streamrec.embedding.quantized_rows import dequantize, quantize, worth_quantizing

LEVELS = {"int8": 255, "int16": 65535}

finite_rows = arrays(
    np.float32,
    st.tuples(st.integers(0, 20), st.integers(1, 40)),
    elements=st.floats(-1e4, 1e4, width=32),
)


@settings(max_examples=200, deadline=None)
@given(weights=finite_rows, precision=st.sampled_from(["int8", "int16"]))
def test_each_element_is_within_half_a_step_of_its_row(weights, precision):
    codes, params = quantize(weights, precision)
    back = dequantize(codes, params)
    assert back.shape == weights.shape and back.dtype == np.float32
    if weights.size == 0:
        return
    span = weights.max(axis=1).astype(np.float64) - weights.min(axis=1)
    step = span / LEVELS[precision]
    err = np.abs(back.astype(np.float64) - weights).max(axis=1)
    # half a step of rounding, plus float32 rounding of the products at the row's magnitude
    magnitude = np.abs(weights).max(axis=1).astype(np.float64)
    assert (err <= step / 2 + 4e-7 * magnitude + 1e-30).all()
    constant = span == 0  # FTRL's exact zeros and any constant row come back exactly
    assert (back[constant] == weights[constant]).all()


def test_only_dims_that_save_bytes_are_worth_quantizing():
    assert not worth_quantizing(1, "int8") and not worth_quantizing(3, "int8")
    assert worth_quantizing(4, "int8") and worth_quantizing(16, "int8")
    assert not worth_quantizing(5, "int16") and worth_quantizing(6, "int16")
    assert not worth_quantizing(64, "fp32")


def _trained(dim: int = 8, n: int = 3000) -> DynamicTable:
    table = DynamicTable(dim=dim, name="t", init_scale=0.3, chunk_rows=1024)
    ids = torch.arange(n) * 7919
    table.lookup(ids, now=0)
    table.apply_gradients(ids[: n // 2], torch.randn(n // 2, dim))
    return table


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("dim", [8, 5])  # 5: codes padded to whole words
def test_a_quantized_table_reads_what_it_held_within_the_bound(precision, dim):
    table = _trained(dim)
    ids = torch.cat([torch.arange(3000) * 7919, torch.tensor([-5, 10**15])])  # 2 unknown
    exact = table.lookup(ids, insert=False)
    before = table.memory_bytes()["weights"]
    table.set_row_precision(precision)
    assert table.row_precision == precision
    if worth_quantizing(dim, precision):
        assert table.memory_bytes()["weights"] < before
    read = table.lookup(ids, insert=False)
    span = (exact.max(1).values - exact.min(1).values)[:, None]
    assert ((read - exact).abs() <= span / LEVELS[precision] / 2 + 1e-6).all()
    assert (read[-2:] == 0).all()
    group = TableGroup([table])  # the kernel serving calls: the same rows
    out, inverse, _ = group.lookup(ids.numpy(), np.array([0, len(ids)]), None, False)
    assert torch.equal(out[torch.from_numpy(inverse)], read)
    with pytest.raises(ValueError, match="re-encoding"):
        table.set_row_precision("int16" if precision == "int8" else "int8")


@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_a_quantized_table_saves_its_codes_and_loads_them_exactly(precision):
    table = _trained(dim=7)
    codes, params = quantize(table.gather_rows(np.arange(3000)), precision)
    table.set_row_precision(precision)
    state = table.state_dict()
    assert state["weights"].shape == (3000, 7) and state["weight_params"].shape == (3000, 2)
    assert state["weights"].dtype == {"int8": torch.uint8, "int16": torch.uint16}[precision]
    assert np.array_equal(state["weights"].numpy(), codes)  # the delta files' layout
    assert np.array_equal(state["weight_params"].numpy(), params)
    again = DynamicTable(dim=7, name="t", chunk_rows=1024)
    again.load_state_dict(state)
    ids = torch.arange(3000) * 7919
    assert again.row_precision == precision
    assert torch.equal(again.lookup(ids, insert=False), table.lookup(ids, insert=False))
    without_params = {k: v for k, v in state.items() if k != "weight_params"}
    with pytest.raises(ValueError, match="scale and offset"):
        DynamicTable(dim=7, name="t").load_state_dict(without_params)
    short = {**state, "weight_params": state["weight_params"][:-1]}
    with pytest.raises(ValueError, match="one \\(scale, offset\\) pair"):
        DynamicTable(dim=7, name="t").load_state_dict(short)


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete"]),
            st.lists(st.integers(0, 60), min_size=1, max_size=20, unique=True),
            st.floats(-3, 3),
        ),
        max_size=12,
    )
)
def test_deltas_on_a_quantized_table_match_an_fp32_one(ops):
    """Upserts (a delta's rows, re-admitting freed rows too) and deletions: the int8 table reads
    what an fp32 table given the same operations reads, to within each row's step."""
    exact = DynamicTable(dim=4, name="t", chunk_rows=16)
    small = DynamicTable(dim=4, name="t", chunk_rows=16)
    small.set_row_precision("int8")
    rng = np.random.default_rng(0)
    for op, ids, level in ops:
        fids = np.array(ids, np.int64)
        if op == "upsert":
            rows = (level + rng.normal(size=(len(ids), 4))).astype(np.float32)
            exact.upsert(fids, rows)
            small.upsert(fids, rows)
        else:
            assert sorted(exact.delete(fids).tolist()) == sorted(small.delete(fids).tolist())
    probe = torch.arange(61)
    want, got = exact.lookup(probe, insert=False), small.lookup(probe, insert=False)
    span = (want.max(1).values - want.min(1).values)[:, None]
    assert ((got - want).abs() <= span / 255 / 2 + 1e-5).all()
    assert sorted(exact.live_fids().tolist()) == sorted(small.live_fids().tolist())


def test_a_quantized_table_refuses_to_train():
    table = _trained()
    table.set_row_precision("int8")
    with pytest.raises(ValueError, match="cannot train"):
        table.lookup(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="cannot train"):
        table.apply_gradients(torch.tensor([0]), torch.ones(1, 8))
    group = TableGroup([table])
    with pytest.raises(ValueError, match="cannot train"):
        group.lookup(np.array([0]), np.array([0, 1]), None, True)


def test_a_group_of_mixed_precisions_reads_each_table_its_own_way():
    a, b = _trained(), _trained()
    ids = np.arange(3000, dtype=np.int64) * 7919
    want_b = b.lookup(torch.from_numpy(ids), insert=False)
    a.set_row_precision("int8")
    group = TableGroup([a, b])
    fids = np.concatenate([ids, ids])
    out, inverse, _ = group.lookup(fids, np.array([0, 3000, 6000]), None, False)
    rows = out[torch.from_numpy(inverse)]
    assert torch.equal(rows[:3000], a.lookup(torch.from_numpy(ids), insert=False))
    assert torch.equal(rows[3000:], want_b)
