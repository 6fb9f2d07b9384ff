"""The packed open-addressing map against a dict, through growth and backward-shift deletes."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding.hashmap import ShardedMap

fid = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.lists(fid, min_size=1, max_size=40)), max_size=12),
    st.integers(1, 3),
)
def test_map_agrees_with_a_dict_through_inserts_deletes_and_growth(ops, shard_bits):
    m = ShardedMap(shard_bits=shard_bits, initial_slots=2)  # tiny shards: growth every few ids
    reference: dict[int, int] = {}
    next_row = 0
    for insert, fids in ops:
        batch = np.unique(np.array(fids, np.int64))
        if insert:
            new = np.array([f for f in batch if int(f) not in reference], np.int64)
            rows = np.arange(next_row, next_row + new.size, dtype=np.int64)
            m.insert(new, rows)
            reference.update(zip(new.tolist(), rows.tolist(), strict=True))
            next_row += new.size
        else:
            removed = m.delete(batch)
            expected = [reference.pop(int(f), -1) for f in batch]
            assert removed.tolist() == expected
        assert len(m) == len(reference)
        known = np.array(list(reference), np.int64)
        assert m.find(known).tolist() == [reference[k] for k in known.tolist()]
    absent = np.array([f for f in (0, -1, 2**63 - 1, -(2**63)) if f not in reference], np.int64)
    assert (m.find(absent) == -1).all()
