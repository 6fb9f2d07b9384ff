import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.data.stream import LocalLog, LocalLogSource


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(2, 7), st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_every_message_is_read_once_in_order_across_segments(n, segment, polls):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        log = LocalLog(d, segment_messages=segment)
        for i in range(n):
            log.append({"i": i})
        log.flush()
        source = LocalLogSource(d)
        seen = []
        k = 0
        while len(seen) < n:
            batch = source.poll(polls[k % len(polls)], timeout=0.0)
            k += 1
            assert batch, "poll returned nothing with messages left"
            seen += [(m.offset, json.loads(m.value)["i"]) for m in batch]
        assert seen == [(i, i) for i in range(n)]
        assert source.poll(5, timeout=0.0) == [] and source.head() == n


def test_partial_lines_wait_and_commit_and_seek_resume(tmp_path):
    log = LocalLog(tmp_path, segment_messages=4)
    for i in range(6):
        log.append({"i": i})
    log.flush()
    with open(tmp_path / "00000000000000000004.seg", "ab") as fh:
        fh.write(b'{"i": 6')  # a producer half-way through a write
    source = LocalLogSource(tmp_path, group="g")
    assert [m.offset for m in source.poll(10, timeout=0.05)] == list(range(6))
    with open(tmp_path / "00000000000000000004.seg", "ab") as fh:
        fh.write(b"}\n")
    assert [m.offset for m in source.poll(10, timeout=0.05)] == [6]
    source.commit(3)
    again = LocalLogSource(tmp_path, group="g")
    assert again.position == 3
    assert [m.offset for m in again.poll(2)] == [3, 4]
    again.seek(1)
    assert [m.offset for m in again.poll(1)] == [1]
    assert LocalLogSource(tmp_path, group="other").position == 0
