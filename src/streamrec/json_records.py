"""JSON records checked against the model's input kinds — the one validator behind stream
messages (`train/online.py`) and HTTP bodies (`serving/request.py`).

Each input kind maps to one msgspec type (`python_type`), so a value is accepted or refused the
same way wherever it enters: an int id must be a JSON integer within int64 (not `true`, not
2**70), a float a finite JSON number, a string valid UTF-8. Decoding runs in C and names the
offending field (`Expected int, got bool - at $.user_id`).

`StreamRecordDecoder` turns a batch of messages into typed columns; a message that is not a
JSON object, is too large or too deeply nested, has a value of the wrong type, an absurd
timestamp or a label its rule cannot map (`Label.to_binary`: 0/1 unless a threshold, positive
values or a value map say otherwise) is returned with its reason instead — the caller
dead-letters it. Nothing about a message's content can raise. An event time more than
`max_skew_seconds` ahead of this machine's clock (in the declared `timestamp_unit`) is such a
reason: one record dated 2100, or a producer that switched to milliseconds, must not reach the
tables' expiry clock.
"""

from __future__ import annotations

import operator
import sys
import time
from collections import Counter
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa

from streamrec.kinds import arrow_type
from streamrec.schema import SECONDS_PER_UNIT, Label, label_key

INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
FINITE = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
# Event time in seconds (or milliseconds) since 1970: before the year 2286 either way.
TIMESTAMP = Annotated[float, msgspec.Meta(ge=0, lt=2**63)]  # range in seconds: `_event_times`
LABEL = bool | FINITE | str  # mapped by the label's rule (`Label.to_binary`)

KINDS = ("int", "float", "string", "list<int>", "list<float>", "list<string>")


def python_type(kind: str) -> Any:
    """The msgspec type of one input kind (`schema.value_kind`)."""
    if kind.startswith("list<"):
        return list[python_type(kind[5:-1])]
    return {"int": INT64, "float": FINITE, "string": str}[kind]


def json_kind(value: object) -> str | None:
    """The kind a decoded JSON value would have as a column (None for null / unusable)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        inner = {json_kind(v) for v in value} - {None}
        return f"list<{inner.pop()}>" if len(inner) == 1 and "list" not in str(inner) else None
    return None


def majority_kinds(messages: list[bytes], columns: list[str]) -> dict[str, str]:
    """Each column's most common kind among the messages that parse — for a run with neither a
    saved model nor declared kinds, so that one odd first message cannot fix a column's type."""
    votes: dict[str, Counter] = {c: Counter() for c in columns}
    for value in messages:
        try:
            record = msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError):
            continue
        if isinstance(record, dict):
            for c in columns:
                kind = json_kind(record.get(c))
                if kind is not None:
                    votes[c][kind] += 1
    return {c: v.most_common(1)[0][0] for c, v in votes.items() if v}


class StreamRecordDecoder:
    """Stream messages → (Arrow table of the good ones, [(index, reason)] of the others).

    `kinds`: input column → kind; `labels`: the tasks' label rules; `timestamp`: the event-time
    column, if any. Fields the model does not read are ignored (producers add fields)."""

    def __init__(
        self,
        kinds: dict[str, str],
        labels: list[Label],
        timestamp: str | None,
        max_message_bytes: int,
        timestamp_unit: str = "s",
        max_skew_seconds: float = 86_400.0,
        max_age_seconds: float | None = None,
    ) -> None:
        self.kinds = dict(kinds)
        self.units_per_second = SECONDS_PER_UNIT[timestamp_unit]
        self.timestamp_unit = timestamp_unit
        self.max_skew_seconds = max_skew_seconds
        self.max_age_seconds = max_age_seconds
        self.labels = labels
        self.timestamp = timestamp
        self.max_bytes = max_message_bytes
        fields: list[tuple[str, Any]] = [(c, python_type(k) | None) for c, k in kinds.items()]
        fields += [(lab.name, LABEL | None) for lab in labels if lab.name not in kinds]
        if timestamp and timestamp not in kinds:
            fields.append((timestamp, TIMESTAMP | None))
        names = [name for name, _ in fields]
        attrs = [f"f{i}" for i in range(len(names))]
        record = msgspec.defstruct(
            "StreamRecord",
            [(a, t, None) for a, (_, t) in zip(attrs, fields, strict=True)],
            rename=dict(zip(attrs, names, strict=True)),
            gc=False,
        )
        self._decoder = msgspec.json.Decoder(record)
        self._getters = {n: operator.attrgetter(a) for n, a in zip(names, attrs, strict=True)}

    def decode(self, messages: list[bytes]) -> tuple[pa.Table | None, list[tuple[int, str]]]:
        records, kept, rejects = [], [], []
        decode = self._decoder.decode
        for i, value in enumerate(messages):
            if len(value) > self.max_bytes:
                rejects.append((i, f"message is {len(value)} bytes; the limit is {self.max_bytes}"))
                continue
            try:
                records.append(decode(value))
                kept.append(i)
            except msgspec.ValidationError as e:
                rejects.append((i, f"invalid record: {e}"))
            except (msgspec.DecodeError, RecursionError) as e:
                rejects.append((i, f"not JSON: {e}"))
        if not records:
            return None, rejects
        columns = {name: list(map(get, records)) for name, get in self._getters.items()}
        bad = np.zeros(len(records), bool)
        reasons: list[str | None] = [None] * len(records)
        for lab in self.labels:
            values, problem = self._label(lab, columns[lab.name])
            columns[lab.name] = values
            for j in np.flatnonzero(problem & ~bad):
                reasons[j] = self._label_reason(lab, columns, j, records)
            bad |= problem
        if self.timestamp:
            problem, why = self._event_times(columns[self.timestamp])
            for j in np.flatnonzero(problem & ~bad):
                reasons[j] = why(j)
            bad |= problem
        if bad.any():
            rejects += [(kept[j], reasons[j]) for j in np.flatnonzero(bad)]
            rejects.sort()
            good = np.flatnonzero(~bad)
            if good.size == 0:
                return None, rejects
            columns = {n: _take(v, good) for n, v in columns.items()}
        return pa.table(self._arrays(columns)), rejects

    def _event_times(self, raw: list[Any]) -> tuple[np.ndarray, Any]:
        """(bad mask, index → reason) for event times beyond the clock + skew or, with
        `max_age_seconds`, older than that (vectorised; a missing time is not judged)."""
        seconds = np.array([np.nan if v is None else v for v in raw], np.float64)
        seconds /= self.units_per_second
        now = time.time()
        future = seconds > now + self.max_skew_seconds
        old = (
            seconds < now - self.max_age_seconds
            if self.max_age_seconds is not None
            else np.zeros(len(seconds), bool)
        )

        def why(j: int) -> str:  # no wall time in it: a replay writes the same dead letters
            given = f"{self.timestamp} {raw[j]!r} ({self.timestamp_unit})"
            if future[j]:
                return (
                    f"event time {given} is ahead of this machine's clock by more than "
                    f"schema.max_event_skew_seconds ({self.max_skew_seconds:,.0f}): a producer "
                    f"clock or unit error — declare schema.timestamp_unit if the producer "
                    f"writes ms or us"
                )
            return (
                f"event time {given} is older than schema.max_event_age_seconds "
                f"({self.max_age_seconds:,.0f})"
            )

        return future | old, why

    def _label(self, lab: Label, raw: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(0/1 labels, bad mask) by the label's rule; the table then carries them mapped
        (`Schema.with_labels_mapped` encodes it)."""
        return lab.to_binary(pa.array([None if v is None else label_key(v) for v in raw],
                                       pa.string()))

    def _label_reason(self, lab: Label, columns: dict, j: int, records: list) -> str:
        raw = self._getters[lab.name](records[j])
        if raw is None:
            return f"missing label field {lab.name!r}"
        return f"label {lab.name!r} is {raw!r}: {lab.rule_hint()}"

    def _arrays(self, columns: dict[str, list]) -> dict[str, pa.Array]:
        arrays = {}
        for name, values in columns.items():
            if name in self.kinds:
                arrays[name] = pa.array(values, type=arrow_type(self.kinds[name]))
            elif name == self.timestamp:
                arrays[name] = pa.array(
                    [None if v is None else int(v) for v in values], pa.int64()
                )
            else:  # a label, already mapped to 0/1
                arrays[name] = pa.array(values, pa.float32())
        return arrays


def _take(values: list | np.ndarray, rows: np.ndarray) -> list | np.ndarray:
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[i] for i in rows]
