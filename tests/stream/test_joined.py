"""Impressions + actions from two real local streams, joined and trained online; a crash after
a checkpoint resumes with the joiner state and both positions, so every impression is trained
exactly once with the right label."""

import numpy as np

from streamrec.config import parse_config
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.data.stream.joined import JoinedSource
from streamrec.data.stream.joiner import OnlineJoiner
from streamrec.train.online import OnlineTrainer

CONFIG = {
    "schema": {
        "labels": [{"name": "click"}],
        "embeddings": [{"name": "user_id"}, {"name": "item_id"}],
    },
    "default_table": {"dim": 4},
    "data": {"batch_size": 50},
    "model": {"name": "fm"},
    "online": {
        "deterministic": True,
        "sync_every_batches": 2,
        "checkpoint_every_batches": 3,
        "join": {"window_seconds": 30, "tasks": {"click": "click"}},
    },
}


def _streams(tmp_path, n=600, seed=0):
    rng = np.random.default_rng(seed)
    imps, acts = LocalLog(tmp_path / "imps"), LocalLog(tmp_path / "acts")
    clicked = set()
    for i in range(n):
        t = i
        imps.append(
            {
                "request_id": f"q{i}",
                "item_id": int(rng.integers(0, 50)),
                "user_id": int(rng.integers(0, 20)),
                "event_time": t,
            }
        )
        if rng.random() < 0.3:
            clicked.add(i)
            acts.append(
                {"request_id": f"q{i}", "item_id": None, "action": "click", "event_time": t + 5}
            )
    imps.close()
    acts.close()
    return clicked


def _fix_actions(tmp_path):
    """Actions need the impression's item: rewrite them from the impressions log."""
    import json

    items = {}
    for line in (tmp_path / "imps" / "00000000000000000000.seg").read_text().splitlines():
        r = json.loads(line)
        items[r["request_id"]] = r["item_id"]
    seg = tmp_path / "acts" / "00000000000000000000.seg"
    lines = [json.loads(x) for x in seg.read_text().splitlines()]
    seg.write_text(
        "".join(json.dumps({**r, "item_id": items[r["request_id"]]}) + "\n" for r in lines)
    )


def _source(tmp_path, cfg):
    j = cfg.online.join
    return JoinedSource(
        LocalLogSource(tmp_path / "imps"),
        LocalLogSource(tmp_path / "acts"),
        OnlineJoiner(j.tasks, j.window_seconds),
    )


def test_joined_streams_train_every_impression_once_across_a_crash(tmp_path):
    clicked = _streams(tmp_path)
    _fix_actions(tmp_path)
    cfg = parse_config(CONFIG)
    first = OnlineTrainer(cfg, _source(tmp_path, cfg), tmp_path / "run", progress=False)
    source = first.source
    steps = 0
    while steps < 7:  # checkpoints after batches 3 and 6, then one batch that is lost
        messages = source.poll(50, timeout=0.1)
        if messages:
            first.step(messages)
            steps += 1
    from streamrec.store import read_manifest

    covered = read_manifest(tmp_path / "run" / "checkpoint")["online"]["events_trained"]
    assert 0 < covered < first.events_trained
    first.close()  # the process dies here, and its run-directory lock with it
    resumed = OnlineTrainer(cfg, _source(tmp_path, cfg), tmp_path / "run", progress=False)
    assert resumed.events_trained == covered
    status = resumed.run(stop_when_idle=0.5)
    assert status["events_trained"] == 600 and status["dead_lettered"] == 0
    stats = resumed.source.joiner.stats
    assert stats["emitted_positive"] == len(clicked)
    assert stats["late_actions"] == 0
