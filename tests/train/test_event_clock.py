"""The expiry clock: a watermark no single event time moves (property tests), and the
mass_expiry health rule that names it when a pass deletes an unusual share of a table."""

from __future__ import annotations

import time

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.config import HealthRulesConfig
from streamrec.train.event_clock import EventClock
from streamrec.train.health import HealthRules

NOW = int(time.time())
times = st.integers(NOW - 10**9, NOW + 10**6)
batches = st.lists(st.lists(times, min_size=1, max_size=64), min_size=1, max_size=8)


@given(batches)
@settings(max_examples=60, deadline=None)
def test_the_clock_never_goes_back_nor_past_the_wall_clock_plus_skew(batches):
    clock = EventClock(max_skew_seconds=3600)
    before = None
    for batch in batches:
        now = clock.advance(torch.tensor(batch, dtype=torch.int64))
        assert before is None or now >= before
        assert now <= time.time() + 3600
        ordered = sorted(batch)
        assert before is not None and now == before or now <= ordered[len(ordered) // 2]
        before = now


@given(st.lists(times, min_size=3, max_size=64), st.integers(0, 2**62))
@settings(max_examples=60, deadline=None)
def test_one_outlier_does_not_move_the_clock_past_the_other_events(batch, outlier):
    clock = EventClock()
    now = clock.advance(torch.tensor([*batch, outlier], dtype=torch.int64))
    assert now <= max(batch)


def test_no_event_time_leaves_the_clock_where_it_is():
    clock = EventClock()
    assert clock.advance(None) is None
    assert clock.advance(torch.tensor([100, 200, 300])) == 200
    assert clock.advance(torch.empty(0, dtype=torch.int64)) == 200
    assert clock.advance(torch.tensor([50, 60, 70])) == 200  # a late batch: never back


def test_mass_expiry_fires_against_the_tables_own_history():
    rules = HealthRules(HealthRulesConfig(check_every_steps=10))
    rules.check_expiry(10, "users", 287, 335, "clock A")  # a first pass: history, not judged
    rules.check_expiry(10, "items", 2_688, 5_604, "clock A")  # 48%: a big but normal pass
    rules.check_expiry(20, "items", 300, 3_000, "clock A")
    assert rules.take_fired() == []
    rules.check_expiry(30, "items", 5_363, 5_604, "clock B")  # 96%: the 2100 event's pass
    fired = rules.take_fired()
    assert [w.key for w in fired] == ["mass_expiry:items"]
    assert "clock B" in fired[0].message and "5,363" in fired[0].message
    rules.check_expiry(30, "users", 330, 335, "clock B")  # 98.5% ≤ 1.5 × 86%: not unusual
    rules.check_expiry(40, "tags", 0, 100, "clock B")
    rules.check_expiry(50, "tags", 95, 100, "clock B")  # 95% after a pass that deleted none
    assert [w.key for w in rules.take_fired()] == ["mass_expiry:tags"]
