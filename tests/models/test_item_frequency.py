import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from streamrec.models.item_frequency import ItemFrequency

ids = st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=200)


@given(ids, st.sampled_from([1, 2, 1024, 1 << 17]))
def test_every_id_lands_in_a_bucket_of_the_array(values, buckets):
    frequency = ItemFrequency(buckets)
    b = frequency.bucket(torch.tensor(values, dtype=torch.int64))
    assert bool((b >= 0).all()) and bool((b < buckets).all())


@given(st.lists(st.tuples(st.integers(0, 10**12), st.integers(1, 30)), min_size=2, max_size=40))
def test_log_q_is_each_items_share_of_the_counts_when_buckets_do_not_collide(counted):
    frequency = ItemFrequency(1 << 20, half_life_steps=1e12)  # (no decay within the test)
    items = torch.tensor([i for i, _ in counted], dtype=torch.int64)
    if frequency.bucket(items).unique().numel() < len(counted):
        return  # two ids share a bucket (or an id repeats): their counts add, by design
    stream = torch.repeat_interleave(items, torch.tensor([c for _, c in counted]))
    frequency.seed(stream)
    shares = frequency.log_q(items).exp()
    total = sum(c for _, c in counted)
    assert shares.tolist() == pytest.approx([c / total for _, c in counted], rel=1e-5)


def test_counts_decay_by_half_over_the_half_life_so_the_estimate_follows_a_new_catalog():
    frequency = ItemFrequency(1024, half_life_steps=100)
    old, new = torch.tensor([1]), torch.tensor([2])
    frequency.seed(old.repeat(1000))
    for _ in range(100):
        frequency.observe(new)  # a new item, once a step
    counts = frequency.counts[frequency.bucket(torch.tensor([1, 2]))]
    assert float(counts[0]) == pytest.approx(500.0, rel=1e-3)
    assert float(counts[1]) == pytest.approx(sum(0.5 ** (k / 100) for k in range(100)), rel=1e-3)


def test_an_id_never_seen_has_a_finite_log_q_no_lower_than_the_rarest_seen():
    frequency = ItemFrequency(1 << 16)
    frequency.seed(torch.tensor([5, 5, 5, 7]))
    unseen, rare = frequency.log_q(torch.tensor([123456789, 7])).tolist()
    assert math.isfinite(unseen) and unseen == pytest.approx(rare)
    assert ItemFrequency(8).log_q(torch.tensor([1])).isfinite().all()  # nothing seen at all


@pytest.mark.parametrize("buckets", [0, 3, 1000])
def test_a_bucket_count_that_is_not_a_power_of_two_is_refused(buckets):
    with pytest.raises(ValueError, match="power of two"):
        ItemFrequency(buckets)
