"""`streamrec push`: a gate against the model serving now, an atomic publish the running server
reloads, a refusal that leaves it alone, a rollback, and a push killed mid-way that leaves the
served model as it was."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamrec.models.persistence import load_model, save_model
from streamrec.push import Condition, PushError, parse_gate, push, rollback
from streamrec.store import find_model_dir, read_manifest
from streamrec.store.versions import list_versions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auc >= baseline - 0.002", [Condition(None, "auc", ">=", True, -0.002)]),
        ("auc>=baseline", [Condition(None, "auc", ">=", True, 0.0)]),
        ("logloss <= baseline + 0.01 and auc > 0.7",
         [Condition(None, "logloss", "<=", True, 0.01), Condition(None, "auc", ">", False, 0.7)]),
        ("click.gauc >= 0.6", [Condition("click", "gauc", ">=", False, 0.6)]),
    ],
)
def test_gates_parse_and_print_back(text, expected):
    assert parse_gate(text) == expected
    assert parse_gate(" and ".join(str(c) for c in expected)) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("accuracy >= 0.9", ["accuracy", "auc"]),
        ("auc => baseline", ["cannot read"]),
        ("auc >= baseline - x", ["cannot read"]),
        ("auc >= 0.7 or ne < 1", ["cannot read"]),
        ("", ["cannot read"]),
    ],
)
def test_unreadable_gates_are_refused_naming_the_part(text, words):
    with pytest.raises(PushError) as e:
        parse_gate(text)
    for word in words:
        assert word in str(e.value)


def test_conditions_hold_against_the_baseline_or_a_number():
    candidate = {"label": {"auc": 0.75, "logloss": 0.5}}
    baseline = {"label": {"auc": 0.76, "logloss": 0.52}}
    within, = parse_gate("auc >= baseline - 0.02")
    assert within.check(candidate, baseline)["passed"]
    assert not parse_gate("auc >= baseline")[0].check(candidate, baseline)["passed"]
    assert parse_gate("logloss <= baseline")[0].check(candidate, baseline)["passed"]
    assert within.check(candidate, None)["why"] == "nothing serves yet"
    assert not parse_gate("auc >= 0.8")[0].check(candidate, None)["passed"]
    undefined = {"label": {"auc": math.nan, "logloss": 0.5}}
    assert not within.check(undefined, baseline)["passed"]
    with pytest.raises(PushError, match="no task 'click'"):
        parse_gate("click.auc > 0.5")[0].check(candidate, baseline)
    with pytest.raises(PushError, match="serving model has no task 'label'"):
        within.check(candidate, {"click": baseline["label"]})


def _worse_copy(run: Path, out: Path) -> Path:
    """The model with its item embeddings scrambled: a candidate a gate must refuse."""
    loaded = load_model(run)
    table = loaded.model.embeddings.tables["item_id"]
    fids = table.live_fids()
    rng = np.random.default_rng(0)
    table.upsert(fids, rng.normal(0, 1, (len(fids), table.dim)).astype(np.float32))
    save_model(out, loaded.model, loaded.config,
               {"input_kinds": loaded.input_kinds, "metrics": {}})
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", *args],
                          capture_output=True, text=True, timeout=300)


def _served_version(server) -> int:
    return server.get("/v1/model").json()["model_version"]


def _wait_for(server, version: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if _served_version(server) == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server did not reload model {version}")


def test_a_gated_push_publishes_refuses_and_rolls_back_under_a_running_server(
    trained_run, tmp_path, start_server
):
    serving = tmp_path / "serving"
    first = json.loads(_cli("push", str(trained_run), "--to", str(serving), "--json").stdout)
    assert first["published"] and first["checks"][0]["why"] == "nothing serves yet"
    parent = read_manifest(find_model_dir(trained_run)).model_version
    assert first["serving_before"] is None and first["serving_after"] == parent
    server = start_server(serving)
    assert _served_version(server) == parent

    worse = _worse_copy(trained_run, tmp_path / "worse")
    refused = _cli("push", str(worse), "--to", str(serving), "--json")
    assert refused.returncode == 1, refused.stderr
    report = json.loads(refused.stdout)
    assert not report["published"] and report["serving_after"] == parent
    check = report["checks"][0]
    assert check["candidate"] < check["baseline"] - 0.002
    time.sleep(1.5)  # a poll or more: nothing to reload
    assert _served_version(server) == parent and list_versions(serving) == [1]

    better = push(trained_run, serving, gate="auc >= baseline and logloss <= baseline")
    assert better["published"] and better["version"] == 2  # the same model passes ">="
    worse_published = push(worse, serving, gate="auc >= 0.5")
    assert worse_published["published"]
    _wait_for(server, read_manifest(worse).model_version)

    back = _cli("push", "--rollback", "--to", str(serving), "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["version"] == 2
    _wait_for(server, parent)
    actions = [json.loads(line)["action"] for line in (serving / "push_log.jsonl").open()]
    assert actions == ["push", "push", "push", "push", "rollback"]
    assert _cli("push", "--to", str(serving)).returncode == 2  # neither CANDIDATE nor --rollback


def test_a_push_killed_before_its_rename_leaves_the_served_model(trained_run, tmp_path):
    serving = tmp_path / "serving"
    push(trained_run, serving)
    before = find_model_dir(serving)
    killed = subprocess.run(
        [sys.executable, "-c", (
            "import os, signal, streamrec.push as p\n"
            "p.os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"p.push({str(trained_run)!r}, {str(serving)!r}, gate='auc > 0')\n"
        )],
        capture_output=True, timeout=300,
    )
    assert killed.returncode == -9
    leftovers = [p for p in serving.iterdir() if ".tmp-" in p.name]
    assert leftovers and find_model_dir(serving) == before  # the copy is never served
    again = push(trained_run, serving, gate="auc > 0")
    assert again["version"] == 2 and not [p for p in serving.iterdir() if ".tmp-" in p.name]


def test_rollback_needs_a_previous_version_and_push_refuses_a_model_directory(
    trained_run, tmp_path
):
    serving = tmp_path / "serving"
    push(trained_run, serving)
    with pytest.raises(PushError, match="needs a previous one"):
        rollback(serving)
    with pytest.raises(PushError, match="is a model directory"):
        push(trained_run, find_model_dir(trained_run))
    assert find_model_dir(serving).name == "000000000001"
