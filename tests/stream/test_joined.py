"""Impressions + actions from two real local streams, joined and trained online; a crash after
a checkpoint resumes with the joiner state and both positions, so every impression is trained
exactly once with the right label."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from streamrec.config import parse_config
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.data.stream.joined import JoinedSource
from streamrec.data.stream.joiner import OnlineJoiner
from streamrec.store import read_manifest
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
    covered = read_manifest(tmp_path / "run" / "checkpoint").online.events_trained
    assert 0 < covered < first.events_trained
    first.close()  # the process dies here, and its run-directory lock with it
    resumed = OnlineTrainer(cfg, _source(tmp_path, cfg), tmp_path / "run", progress=False)
    assert resumed.events_trained == covered
    status = resumed.run(stop_when_idle=0.5)
    assert status["events_trained"] == 600 and status["dead_lettered"] == 0
    stats = resumed.source.joiner.stats
    assert stats["emitted_positive"] == len(clicked)
    assert stats["late_actions"] == 0


@pytest.mark.slow
def test_a_servers_impression_log_trains_each_shown_item_once_across_kill_9(tmp_path):
    """Request records as `serve --log-impressions` writes them (one per answer, its items
    inside) and click records as POST /v1/feedback writes them; `streamrec online` is
    SIGKILLed three times and rerun: every shown item is trained exactly once, every click
    joined once."""
    rng = np.random.default_rng(3)
    imps, acts = LocalLog(tmp_path / "imps"), LocalLog(tmp_path / "acts")
    start = time.time() - 3600  # an hour ago: the windows close as the run drains
    shown = clicks = 0
    for r in range(1500):
        t = start + r
        items = rng.choice(200, 4, replace=False).tolist()
        imps.append({
            "request_id": f"r{r}", "event_time": t, "endpoint": "recommend",
            "versions": {"ranking": 1}, "context": {"user_id": int(rng.integers(0, 50))},
            "items": [{"item_id": i, "position": p, "features": {"item_id": i},
                       "scores": {"ranking": 0.5}} for p, i in enumerate(items)],
        })
        shown += len(items)
        for i in items[:2]:
            if rng.random() < 0.3:
                acts.append({"request_id": f"r{r}", "item_id": i, "action": "click",
                             "event_time": t + 2})
                clicks += 1
    imps.close()
    acts.close()
    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "online": {
        "checkpoint_interval_seconds": 0.5, "sync_interval_seconds": 0.3,
        "join": {"window_seconds": 30, "tasks": {"click": "click"}}}}))
    cmd = [sys.executable, "-m", "streamrec", "online", str(config), "--source",
           str(tmp_path / "imps"), "--actions", str(tmp_path / "acts"), "--out",
           str(tmp_path / "run"), "--stop-when-idle", "2", "--json"]
    killed_at: list[int] = []  # events trained when each kill landed
    trained = 0
    for extra in (0.1, 0.3, 0.5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # until it trained more
            if _trained(tmp_path / "run") > trained:
                break
            time.sleep(0.02)
        time.sleep(extra)
        if proc.poll() is not None:
            break  # it finished: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        trained = _trained(tmp_path / "run")
        killed_at.append(trained)
    assert sum(0 < t < shown for t in killed_at) >= 2, killed_at  # two kills mid-stream
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["events_trained"] == shown and status["dead_lettered"] == 0
    stats = _joiner_stats(read_manifest(tmp_path / "run" / "checkpoint"))
    assert stats["emitted"] == shown and stats["emitted_positive"] == clicks
    assert stats["duplicate_impressions"] == stats["late_actions"] == 0


def _trained(run) -> int:
    """Events trained by the newest status a (possibly killed) run wrote; 0 before any."""
    try:
        return int(json.loads((run / "status.json").read_text())["events_trained"])
    except (OSError, ValueError, KeyError):
        return 0


def _joiner_stats(manifest) -> dict:
    """The joiner's counters, from wherever the checkpoint keeps the source's state."""
    found = []
    manifest = manifest.model_dump(mode="json", by_alias=True)

    def walk(node):
        if isinstance(node, dict):
            if "joiner" in node and isinstance(node["joiner"], dict):
                found.append(node["joiner"]["stats"])
            for v in node.values():
                walk(v)

    walk(manifest)
    assert found, "the checkpoint holds the joiner's state"
    return found[0]
