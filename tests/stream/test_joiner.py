import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.data.stream.joiner import OnlineJoiner, impressions_of


def imp(req, item, t):
    return {"request_id": req, "item_id": item, "event_time": t, "user_id": 1}


def act(req, item, t, action="click"):
    return {"request_id": req, "item_id": item, "event_time": t, "action": action}


def test_hand_built_sequence_with_late_duplicate_and_early_actions():
    j = OnlineJoiner({"click": "click", "like": "like"}, window_seconds=10)
    out = []
    out += j.add_impression(imp("r1", 1, 0))
    out += j.add_impression(imp("r1", 2, 0))
    out += j.add_action(act("r1", 1, 3))
    out += j.add_action(act("r1", 1, 4))  # duplicate click
    out += j.add_action(act("r1", 1, 5, "like"))
    out += j.add_impression(imp("r1", 1, 6))  # duplicate impression
    out += j.add_action(act("r2", 9, 7))  # action before its impression
    out += j.add_impression(imp("r2", 9, 8))
    assert out == []
    out += j.add_impression(imp("r3", 5, 10))  # watermark 10: r1's window closes
    assert [(o["request_id"], o["item_id"], o["click"], o["like"]) for o in out] == [
        ("r1", 1, 1, 1),
        ("r1", 2, 0, 0),
    ]
    out += j.add_action(act("r1", 2, 11))  # too late for r1/2
    out += j.add_impression(imp("r4", 1, 30))
    labels = {(o["request_id"], o["item_id"]): (o["click"], o["like"]) for o in out}
    assert labels[("r2", 9)] == (1, 0) and labels[("r3", 5)] == (0, 0)
    s = j.stats
    assert (
        s["duplicate_actions"],
        s["duplicate_impressions"],
        s["late_actions"],
        s["early_actions"],
    ) == (1, 1, 1, 1)
    assert j.label_coverage == 2 / 4
    assert [o["request_id"] for o in j.flush()] == ["r4"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 60)), min_size=1, max_size=60
    ),
    st.integers(1, 40),
)
def test_checkpointed_state_continues_exactly(events, cut):
    def run(split):
        j = OnlineJoiner({"click": "click"}, window_seconds=8, max_pending=10)
        out = []
        for i, (is_imp, item, t) in enumerate(sorted(events, key=lambda e: e[2])):
            if i == split:
                state = json.loads(json.dumps(j.state_dict()))
                j = OnlineJoiner({"click": "click"}, window_seconds=8, max_pending=10)
                j.load_state_dict(state)
            rec = imp("r", item, t) if is_imp else act("r", item, t)
            out += j.add_impression(rec) if is_imp else j.add_action(rec)
        return out + j.flush(), j.stats

    assert run(cut) == run(-1)
    out, stats = run(-1)
    assert len(out) == stats["emitted"] == stats["impressions"]


def test_a_server_request_record_becomes_one_impression_per_shown_item():
    record = {
        "request_id": "q1", "event_time": 100.5, "endpoint": "recommend",
        "versions": {"ranking": 3},
        "context": {"user_id": 7, "age": 30},
        "items": [
            {"item_id": 50, "position": 0, "features": {"genres": ["Drama"]},
             "scores": {"ranking": 0.9}},
            {"item_id": 12, "position": 1, "features": {}, "scores": {"ranking": 0.8}},
        ],
    }
    got = impressions_of(record, "timestamp", 1000)
    assert got == [
        {"user_id": 7, "age": 30, "genres": ["Drama"], "item_id": 50, "request_id": "q1",
         "event_time": 100.5, "position": 0, "timestamp": 100500},
        {"user_id": 7, "age": 30, "item_id": 12, "request_id": "q1", "event_time": 100.5,
         "position": 1, "timestamp": 100500},
    ]
    flat = imp("r", 1, 5)
    assert impressions_of(flat) == [flat]  # already one impression


def test_flush_before_a_time_keeps_what_may_still_be_clicked():
    j = OnlineJoiner({"click": "click"}, window_seconds=60)
    for i, t in enumerate((10, 20, 30)):
        j.add_impression(imp(f"r{i}", 1, t))
    assert [o["request_id"] for o in j.flush(before=25)] == ["r0", "r1"]
    assert j.add_action(act("r2", 1, 31)) == []  # r2 still waits: its click counts
    assert [(o["request_id"], o["click"]) for o in j.flush()] == [("r2", 1)]
