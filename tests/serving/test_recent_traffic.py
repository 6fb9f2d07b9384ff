"""The status page's traffic series: buckets, rates, percentiles, quiet gaps, the window."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.serving.recent_traffic import RecentTraffic

T0 = 1_000_000.0  # a bucket boundary for 5-second buckets


def test_a_closed_bucket_holds_its_rate_and_percentiles():
    traffic = RecentTraffic(bucket_seconds=5.0, window_seconds=60.0)
    traffic._start = T0
    for i in range(100):  # 1 ms … 100 ms
        traffic.record((i + 1) / 1000.0, 200, now=T0 + i * 0.04)
    traffic.record(0.5, 503, now=T0 + 4.5)
    points = traffic.series(now=T0 + 6.0)
    closed, open_ = points[-2], points[-1]
    assert closed.start == T0 and closed.requests == 101 and closed.errors == 1
    assert closed.per_second == pytest.approx(101 / 5.0)
    assert closed.p50_ms == pytest.approx(51.0, abs=0.6)
    assert 99.0 <= closed.p99_ms <= 500.0
    assert open_.requests == 0 and open_.p50_ms is None


def test_quiet_buckets_read_as_zero_and_old_ones_leave_the_window():
    traffic = RecentTraffic(bucket_seconds=5.0, window_seconds=30.0)
    traffic._start = T0
    traffic.record(0.01, 200, now=T0 + 1)
    traffic.record(0.02, 200, now=T0 + 21)  # three quiet buckets between
    points = traffic.series(now=T0 + 22)
    assert [p.requests for p in points] == [1, 0, 0, 0, 1]
    assert [p.start - T0 for p in points] == [0, 5, 10, 15, 20]
    later = traffic.series(now=T0 + 300)  # long silence: only the window's empty buckets
    assert len(later) <= 30 / 5 + 1
    assert sum(p.requests for p in later) == 0


def test_summary_covers_the_last_minute():
    traffic = RecentTraffic(bucket_seconds=5.0)
    traffic._start = T0
    for second in range(120):
        traffic.record(0.010 if second < 60 else 0.030, 200, now=T0 + second)
    summary = traffic.summary(60.0, now=T0 + 120)
    assert summary["qps"] == pytest.approx(1.0, rel=0.1)
    assert summary["p50_ms"] == pytest.approx(30.0, abs=0.01)  # the old minute's 10 ms is out
    assert summary["errors"] == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2.9), st.floats(0, 2)), min_size=1, max_size=200))
def test_every_request_in_the_window_is_counted_once(events):
    """Gaps up to 2.9 s × 200 stay inside the 600 s window."""
    traffic = RecentTraffic(bucket_seconds=5.0, window_seconds=600.0)
    traffic._start = T0
    clock = T0
    for gap, latency in events:
        clock += gap
        traffic.record(latency, 200, now=clock)
    points = traffic.series(now=clock)
    assert sum(p.requests for p in points) == len(events)
    starts = [p.start for p in points]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
