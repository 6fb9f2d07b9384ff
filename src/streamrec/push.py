"""The daily retrain's last step: publish a candidate model to the folder a server reads, only if
it passes a validation gate against the model serving now, and keep the previous ones to roll
back to (TFX's Evaluator + Pusher, in one command).

The serving folder is a folder of versions (`store/versions.py`): `streamrec serve DIR` serves
the newest and reloads when a newer one appears.

    DIR/000000000003/    the model serving now (a copy of a candidate)
    DIR/000000000002/    the one before: `streamrec push --rollback --to DIR` returns to it
    DIR/push_log.jsonl   every push, refusal and rollback, with both models' metrics

A push copies the candidate into a hidden temporary folder, syncs it, and renames it to the
next number: a kill at any point leaves the served model as it was (the temporary is removed by
the next push). A rollback renames the newest version out of the numbered names, in one rename.

The gate compares the candidate and the serving model on the same validation rows (the
candidate's validation split, or `data`): `METRIC OP RHS [and …]` where METRIC is `auc`,
`gauc`, `logloss`, `ne` or `calibration` (of the first task, or `TASK.METRIC`), OP one of
`>= <= > <`, and RHS `baseline`, `baseline ± NUMBER` or a NUMBER. A condition on `baseline`
holds trivially when nothing serves yet (the first push); a metric that is undefined (an AUC of
one class) fails its condition.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.store import find_model_dir, read_manifest
from streamrec.store.atomic import fsync_dir, remove_temporaries, temp_sibling, write_synced
from streamrec.store.manifest import ModelManifest
from streamrec.store.versions import MANIFEST, list_versions, newest_version, version_path

KEEP_VERSIONS = 3  # the serving model and two to roll back to
DEFAULT_GATE = "auc >= baseline - 0.002"
METRICS = ("auc", "gauc", "logloss", "ne", "calibration")
_CONDITION = re.compile(
    r"^\s*(?:(?P<task>[\w-]+)\.)?(?P<metric>\w+)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<baseline>baseline)\s*(?:(?P<sign>[+-])\s*(?P<offset>[0-9.eE+-]+))?"
    r"|(?P<number>-?[0-9.eE+-]+))\s*$"
)
_OPS = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}


class PushError(ValueError):
    """A push or rollback that cannot be done: the message says why and what to do."""


@dataclass(frozen=True)
class Condition:
    task: str | None
    metric: str
    op: str
    against_baseline: bool
    value: float  # the offset from the baseline, or the number

    def check(
        self, candidate: dict[str, dict], baseline: dict[str, dict] | None
    ) -> dict[str, Any]:
        """{condition, candidate, threshold, passed, why}: whether the candidate's metric holds
        against the threshold (the baseline's metric + offset, or the number)."""
        task = self.task or next(iter(candidate))
        if task not in candidate:
            raise PushError(f"gate: no task {task!r}; the model's tasks are {list(candidate)}")
        mine = float(candidate[task][self.metric])
        result = {"condition": str(self), "task": task, "candidate": mine}
        if self.against_baseline:
            if baseline is None:
                return {**result, "threshold": None, "passed": True, "why": "nothing serves yet"}
            if task not in baseline:
                raise PushError(
                    f"gate: the serving model has no task {task!r} (it has {list(baseline)}); "
                    "compare with an absolute gate (METRIC OP NUMBER)"
                )
            theirs = float(baseline[task][self.metric])
            threshold = theirs + self.value
            shown = f"baseline {theirs:.5f}" + (f" {self.value:+g}" if self.value else "")
            result["baseline"] = theirs
        else:
            threshold = self.value
            shown = f"{threshold:g}"
        result["threshold"] = threshold
        if math.isnan(mine) or math.isnan(threshold):
            return {**result, "passed": False, "why": f"{self.metric} is undefined"}
        passed = _OPS[self.op](mine, threshold)
        why = f"candidate {mine:.5f} {self.op} {shown}" + ("" if passed else ": no")
        return {**result, "passed": passed, "why": why}

    def __str__(self) -> str:
        metric = f"{self.task}.{self.metric}" if self.task else self.metric
        if not self.against_baseline:
            return f"{metric} {self.op} {self.value:g}"
        offset = "" if self.value == 0 else f" {'+' if self.value > 0 else '-'} {abs(self.value):g}"
        return f"{metric} {self.op} baseline{offset}"


def parse_gate(text: str) -> list[Condition]:
    """The conditions of a gate expression (see the module doc); PushError naming the part
    that does not parse."""
    conditions = []
    for part in re.split(r"\s+and\s+", text.strip()):
        m = _CONDITION.match(part)
        if m is None:
            raise PushError(
                f"gate: cannot read {part!r}; write METRIC OP baseline[ ± NUMBER] or METRIC OP "
                'NUMBER, joined by "and" (e.g. "auc >= baseline - 0.002 and logloss <= 0.6")'
            )
        if m["metric"] not in METRICS:
            raise PushError(f"gate: unknown metric {m['metric']!r}; choose from {METRICS}")
        try:
            if m["baseline"]:
                value = float(m["offset"] or 0) * (-1 if m["sign"] == "-" else 1)
            else:
                value = float(m["number"])
        except ValueError:
            raise PushError(f"gate: {part!r} has no number where one belongs") from None
        conditions.append(Condition(m["task"], m["metric"], m["op"], bool(m["baseline"]), value))
    return conditions


def push(
    candidate: str | Path,
    serving_dir: str | Path,
    gate: str = DEFAULT_GATE,
    data: str | None = None,
    fmt: str | None = None,
    mlflow: str | None = None,
) -> dict[str, Any]:
    """Evaluate `candidate` and the model serving from `serving_dir` on the same validation
    rows; publish the candidate as the next version if every gate condition holds. Returns the
    report (also appended to `serving_dir/push_log.jsonl`): both models' metrics, each
    condition, `published`, the served version before and after, and the candidate's lineage.
    `mlflow`: a tracking URI where each published model is registered as a model version."""
    conditions = parse_gate(gate)
    source = find_model_dir(candidate)
    manifest = read_manifest(source)
    if manifest.is_retrieval:
        raise PushError("push publishes ranking models; a retriever is served with --retriever")
    root = _versions_folder(serving_dir)
    with _locked(root):
        return _push(conditions, source, manifest, root, data, fmt, mlflow)


def _push(
    conditions: list[Condition],
    source: Path,
    manifest: ModelManifest,
    root: Path,
    data: str | None,
    fmt: str | None,
    mlflow: str | None,
) -> dict[str, Any]:
    from streamrec.train.evaluation import evaluate_model_dir

    remove_temporaries(root)
    serving = newest_version(root)
    candidate_eval = evaluate_model_dir(source, data, fmt)
    baseline_eval = None
    if serving is not None:
        data_config = None if data is not None else _config_data(source)
        baseline_eval = evaluate_model_dir(serving, data, fmt, data_config=data_config)
    checks = [c.check(candidate_eval["metrics"], baseline_eval and baseline_eval["metrics"])
              for c in conditions]
    passed = all(c["passed"] for c in checks)
    before = _version_of(serving)
    report: dict[str, Any] = {
        "action": "push",
        "at": time.time(),
        "candidate": str(source),
        "candidate_model_version": manifest.model_version,
        "gate": " and ".join(str(c) for c in conditions),
        "checks": checks,
        "candidate_metrics": candidate_eval["metrics"],
        "baseline_metrics": baseline_eval and baseline_eval["metrics"],
        "serving_before": before,
        "published": passed,
        "lineage": manifest.lineage and manifest.lineage.model_dump(mode="json"),
    }
    if passed:
        published = _publish(source, root)
        report["version"] = int(published.name)
        report["serving_after"] = _version_of(published)
        if mlflow:
            from streamrec.train.mlflow_run import register_model_version

            name = str(manifest.config.get("name", "streamrec"))
            report["mlflow"] = register_model_version(mlflow, name, published, {
                "streamrec.model_version": str(manifest.model_version),
                "streamrec.gate": report["gate"],
                **{f"auc.{t}": f"{m['auc']:.5f}"
                   for t, m in candidate_eval["metrics"].items() if isinstance(m, dict)},
            })
    else:
        report["serving_after"] = before
    _log(root, report)
    return report


def rollback(serving_dir: str | Path) -> dict[str, Any]:
    """Serve the previous version again: the newest is renamed out of the versions (kept as
    `.rolled-back-N-TIME` for inspection), so the server reloads the one before it."""
    root = _versions_folder(serving_dir)
    with _locked(root):
        return _rollback(root)


def _rollback(root: Path) -> dict[str, Any]:
    versions = list_versions(root)
    if len(versions) < 2:
        raise PushError(
            f"{root}: {len(versions)} version(s) here; a rollback needs a previous one"
        )
    newest = version_path(root, versions[-1])
    before = _version_of(newest)
    os.rename(newest, root / f".rolled-back-{versions[-1]}-{int(time.time())}")
    fsync_dir(root)
    report = {
        "action": "rollback",
        "at": time.time(),
        "rolled_back": versions[-1],
        "serving_before": before,
        "version": versions[-2],
        "serving_after": _version_of(version_path(root, versions[-2])),
    }
    _log(root, report)
    return report


def _publish(source: Path, root: Path) -> Path:
    """Copy `source` into `root` as the next version, visible only once complete."""
    versions = list_versions(root)
    target = version_path(root, (versions[-1] if versions else 0) + 1)
    tmp = temp_sibling(target)
    shutil.copytree(source, tmp)
    for path in sorted(tmp.rglob("*"), reverse=True):  # files, then their folders
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            fsync_dir(path)
    fsync_dir(tmp)
    os.rename(tmp, target)
    fsync_dir(root)
    for old in list_versions(root)[:-KEEP_VERSIONS]:
        shutil.rmtree(version_path(root, old), ignore_errors=True)
    return target


def _versions_folder(serving_dir: str | Path) -> Path:
    root = Path(serving_dir)
    if (root / MANIFEST).exists():
        raise PushError(
            f"{root} is a model directory; push into a folder of versions (a new folder, "
            "which `streamrec serve` then serves)"
        )
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One push or rollback at a time per serving folder (an flock, dropped if killed)."""
    fd = os.open(root / ".push.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PushError(f"{root}: another push or rollback is running") from None
        yield
    finally:
        os.close(fd)


def _config_data(model_dir: Path):
    from streamrec.config import parse_config

    return parse_config(read_manifest(model_dir).config).data


def _version_of(path: Path | None) -> int | None:
    return None if path is None else read_manifest(path).model_version


def _log(root: Path, report: dict[str, Any]) -> None:
    line = (json.dumps(report, default=str) + "\n").encode()
    log = root / "push_log.jsonl"
    previous = log.read_bytes() if log.exists() else b""
    tmp = temp_sibling(log)
    write_synced(tmp, previous + line)
    os.replace(tmp, log)
    fsync_dir(root)
