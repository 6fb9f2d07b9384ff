"""Event time is an input: one record dated 2100, or a producer that switched to milliseconds,
must not move the clock that expires rows (issue: 5,363 of 5,604 item rows deleted by one
message). Online runs over ml-latest-small in time order with the example's one-year TTL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from streamrec.config import parse_config
from streamrec.data.movielens import load_ml_latest_small
from streamrec.data.stream.local_log import LocalLog, LocalLogSource
from streamrec.train.online import OnlineTrainer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mlsmall_online.yaml"
N = 12_000
YEAR_2100 = 4_102_444_800


def _config(**schema):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["schema"].update(schema)
    raw["train"]["evict_every_steps"] = 5  # a pass every 1,280 events: many passes in N
    raw["online"] = {"deterministic": True, "sync_every_batches": 10**6,
                     "checkpoint_every_batches": 10**6}
    return parse_config(raw)


def _records(ml_small_dir, n=N):
    rows = load_ml_latest_small(ml_small_dir).to_pylist()
    return rows[-n:]  # the newest n: 2015–2018, so a one-year TTL expires rows as time goes


def _run(tmp_path: Path, name: str, records: list[dict], cfg) -> OnlineTrainer:
    log = LocalLog(tmp_path / f"{name}.log")
    for r in records:
        log.append(r)
    log.close()
    source = LocalLogSource(tmp_path / f"{name}.log", "g")
    trainer = OnlineTrainer(cfg, source, tmp_path / name, progress=False)
    trainer.run(stop_when_idle=0.3)
    source.close()
    return trainer


def _deleted(trainer: OnlineTrainer) -> int:
    return trainer.trainer.rows_evicted


@pytest.fixture(scope="module")
def unmodified(ml_small_dir, tmp_path_factory):
    trainer = _run(tmp_path_factory.mktemp("plain"), "run", _records(ml_small_dir), _config())
    assert _deleted(trainer) > 1000  # the TTL does expire rows in this window
    return _deleted(trainer)


def test_one_event_dated_2100_is_dead_lettered_and_moves_no_clock(
    ml_small_dir, tmp_path, unmodified
):
    records = _records(ml_small_dir)
    records.insert(N // 2, {**records[N // 2], "timestamp": YEAR_2100})
    trainer = _run(tmp_path, "run", records, _config())
    assert trainer.dead.count == 1
    reason = json.loads((tmp_path / "run" / "dead_letter.jsonl").read_text())["reason"]
    assert "ahead of this machine's clock" in reason and "timestamp_unit" in reason
    assert abs(_deleted(trainer) - unmodified) <= 0.05 * unmodified
    assert not [w for w in trainer._health() if w["rule"] == "mass_expiry"]


def test_a_producer_that_switches_to_milliseconds_is_dead_lettered_not_obeyed(
    ml_small_dir, tmp_path, unmodified
):
    records = _records(ml_small_dir)
    switched = records[: N // 2] + [
        {**r, "timestamp": r["timestamp"] * 1000} for r in records[N // 2:]
    ]
    trainer = _run(tmp_path, "run", switched, _config())
    assert trainer.dead.count == N - N // 2
    assert trainer.events_trained == N // 2
    assert _deleted(trainer) <= 1.05 * unmodified  # no pass deleted the tables wholesale


def test_a_log_in_milliseconds_declared_as_such_trains_as_the_seconds_log(
    ml_small_dir, tmp_path, unmodified
):
    records = [{**r, "timestamp": r["timestamp"] * 1000} for r in _records(ml_small_dir)]
    trainer = _run(tmp_path, "run", records, _config(timestamp_unit="ms"))
    assert trainer.dead.count == 0 and trainer.events_trained == N
    assert _deleted(trainer) == unmodified
