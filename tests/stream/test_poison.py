"""Poison messages: every malformed message is dead-lettered with its offset and reason, the
trainer never raises on message content, and one odd first message cannot fix a column's type.
Each case below crashed `streamrec online` (and every restart) or was trained as it was."""

import json
import subprocess
import sys

import yaml

from streamrec.config import parse_config
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.train.online import OnlineTrainer

CONFIG = {
    "name": "poison",
    "schema": {
        "labels": [{"name": "label"}],
        "timestamp": "timestamp",
        "embeddings": [{"name": "user_id"}, {"name": "item_id"}, {"name": "tags"}],
    },
    "default_table": {"dim": 4, "optimizer": "adagrad", "lr": 0.05},
    "data": {"batch_size": 100},
    "model": {"name": "deepfm", "params": {"hidden": [8]}},
    "online": {"deterministic": True, "max_message_bytes": 300_000},
}


def good(i: int) -> dict:
    return {"user_id": i % 50, "item_id": i % 70, "tags": ["a", "b"], "label": i % 2,
            "timestamp": 1_700_000_000 + i}


POISON = {
    "user_id true": json.dumps({**good(0), "user_id": True}).encode(),
    "user_id 2**70": json.dumps({**good(0), "user_id": 2**70}).encode(),
    "timestamp yesterday": json.dumps({**good(0), "timestamp": "yesterday"}).encode(),
    "timestamp 1e300": json.dumps({**good(0), "timestamp": 1e300}).encode(),
    "nested 100,000 deep": b'{"user_id": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not UTF-8": b'{"user_id": 1, "item_id": 2, "tags": ["\xff"], "label": 1}',
    "oversize": json.dumps({**good(0), "pad": "x" * 400_000}).encode(),
    "label 7": json.dumps({**good(0), "label": 7}).encode(),
    "label -1": json.dumps({**good(0), "label": -1}).encode(),
    "label missing": json.dumps({k: v for k, v in good(0).items() if k != "label"}).encode(),
    "tags of ints": json.dumps({**good(0), "tags": [1, 2]}).encode(),
    "a number": b"42",
}


def _write(path, first_good: int = 300) -> None:
    log = LocalLog(path)
    for i in range(first_good):
        log.append(good(i))
    for value in POISON.values():
        log.append_raw(value)
        log.append(good(7))
    log.close()


def test_every_poison_message_is_dead_lettered_with_its_reason(tmp_path):
    _write(tmp_path / "log")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    cmd = [sys.executable, "-m", "streamrec", "online", str(cfg), "--source",
           str(tmp_path / "log"), "--out", str(tmp_path / "run"), "--stop-when-idle", "0.5",
           "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["dead_lettered"] == len(POISON)
    assert status["events_trained"] == 300 + len(POISON)  # the good message after each poison
    dead = (tmp_path / "run" / "dead_letter.jsonl").read_text().splitlines()
    lines = [json.loads(x) for x in dead]
    reasons = dict(zip(POISON, (line["reason"] for line in lines), strict=True))
    assert "got `bool` - at `$.user_id`" in reasons["user_id true"]
    assert "<= 9223372036854775807 - at `$.user_id`" in reasons["user_id 2**70"]
    assert "at `$.timestamp`" in reasons["timestamp yesterday"]
    assert "at `$.timestamp`" in reasons["timestamp 1e300"]
    assert "recursion" in reasons["nested 100,000 deep"]
    assert "UTF-8" in reasons["not UTF-8"]
    assert "the limit is 300000" in reasons["oversize"]
    assert "label 'label' is 7" in reasons["label 7"] and "threshold" in reasons["label 7"]
    assert "label 'label' is -1" in reasons["label -1"]
    assert "missing label" in reasons["label missing"]
    assert "at `$.tags[0]`" in reasons["tags of ints"]
    assert "Expected `object`" in reasons["a number"]
    offsets = [int(line["file"].split()[-1]) for line in lines]
    assert offsets == [300 + 2 * k for k in range(len(POISON))]  # each names its message
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # restart: no crash
    assert again.returncode == 0 and json.loads(again.stdout)["dead_lettered"] == len(POISON)
    assert len((tmp_path / "run" / "dead_letter.jsonl").read_text().splitlines()) == len(POISON)


def test_one_odd_first_message_does_not_fix_a_columns_type(tmp_path):
    log = LocalLog(tmp_path / "log")
    log.append({**good(0), "user_id": "abc"})
    for i in range(3000):
        log.append(good(i))
    log.close()
    status = OnlineTrainer(
        parse_config(CONFIG), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    ).run(stop_when_idle=0.3)
    assert status["dead_lettered"] == 1 and status["events_trained"] == 3000


def test_declared_kinds_are_the_contract(tmp_path):
    raw = json.loads(json.dumps(CONFIG))
    raw["schema"]["embeddings"][0]["kind"] = "string"  # user ids are declared strings
    log = LocalLog(tmp_path / "log")
    for i in range(200):
        log.append(good(i))  # … but these carry ints: refused, not re-typed by a majority
    log.append({**good(0), "user_id": "u1"})
    log.close()
    trainer = OnlineTrainer(
        parse_config(raw), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    )
    status = trainer.run(stop_when_idle=0.3)
    assert status["events_trained"] == 1 and status["dead_lettered"] == 200
    assert trainer.kinds["user_id"] == "string" and trainer.kinds["item_id"] == "int"
