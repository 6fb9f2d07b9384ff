import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamrec.embedding.admission import new_sketch, sketch_add, sketch_from_state, sketch_state
from streamrec.embedding.table import DynamicTable
from streamrec.table_config import TableConfig


@given(
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(1, 70_000)), max_size=300),
    st.sampled_from([16, 64, 1 << 12]),
)
def test_a_sketch_reads_back_exactly_whether_stored_dense_or_sparse(counted, width):
    sketch = new_sketch(width)
    for fid, count in counted:
        sketch_add(sketch, np.int64(fid), count)
    state = sketch_state(sketch)
    dense = 3 * np.count_nonzero(sketch) >= sketch.size
    assert ("sketch" in state) == dense  # the smaller form
    assert np.array_equal(sketch_from_state(state), sketch)


def test_a_table_that_saw_few_ids_stores_its_sketch_in_kilobytes_and_resumes_admitting():
    config = TableConfig(dim=4, admit_min_count=3)  # the default sketch: 4 × 2^20 counters
    table = DynamicTable.from_config(config, "t")
    ids = np.arange(1000, dtype=np.int64)
    table.resolve(ids)
    table.resolve(ids)  # twice: one more sighting admits them
    state = table.state_dict()
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k.startswith("sketch"))
    assert stored < 100_000  # against 8 MB dense
    again = DynamicTable.from_config(config, "t")
    again.load_state_dict(state)
    assert len(again) == 0
    again.resolve(ids)  # the third sighting, counted from the restored sketch
    assert len(again) == 1000  # (a sketch lost on the way would have admitted none)
