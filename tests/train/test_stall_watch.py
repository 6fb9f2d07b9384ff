"""StallWatch: idle is not stalled; new messages that nobody reads for stall_seconds are."""

from streamrec.train.stall_watch import StallWatch


def test_an_idle_stream_is_not_stalled():
    watch = StallWatch(stall_seconds=10)
    assert watch.observe(consumed=100, head=100, now=0.0) is None
    assert watch.observe(consumed=100, head=100, now=1000.0) is None  # nothing produced
    assert watch.stalled is None


def test_a_moving_head_with_nothing_read_is_reported_once_then_its_recovery():
    watch = StallWatch(stall_seconds=10)
    watch.observe(consumed=100, head=100, now=0.0)
    assert watch.observe(consumed=100, head=150, now=5.0) is None  # not yet 10 s
    line = watch.observe(consumed=100, head=180, now=12.0)
    assert line is not None and "80 new messages" in line and "12 s" in line
    assert watch.stalled == {
        "since": 0.0,
        "seconds": 12.0,
        "new_messages": 80,
        "reason": "80 new messages arrived but none was read for 12 s",
    }
    assert watch.observe(consumed=100, head=200, now=20.0) is None  # logged once
    assert watch.stalled["new_messages"] == 100
    assert watch.observe(consumed=140, head=200, now=21.0) == "source flowing again after 21 s"
    assert watch.stalled is None


def test_an_unknown_head_never_reports_a_stall():
    watch = StallWatch(stall_seconds=1)
    watch.observe(consumed=0, head=None, now=0.0)
    assert watch.observe(consumed=0, head=None, now=100.0) is None and watch.stalled is None
