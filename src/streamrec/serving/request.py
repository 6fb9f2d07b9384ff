"""Request bodies → Arrow tables, with every way a body can be wrong turned into a 4xx.

A rank request is {"context": {feature: value(s)}, "candidates": [{feature: value(s)}, …]}.
Context features are broadcast to every candidate. Each value must fit the kind the feature had
in the training data (int / float / string, or a list of one) — ints stay ids and strings are
hashed, exactly as in training. A feature left out is missing (the schema's missing handling);
a feature the model does not know is an error, not silently ignored.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from streamrec.schema import arrow_type, value_fits


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json(body: bytes, max_bytes: int) -> Any:
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(422, f"request body is not valid JSON: {e}") from None


def _check_value(feature: str, kind: str, value: Any) -> None:
    if not value_fits(kind, value):
        raise RequestError(422, f"feature {feature!r} expects {kind}, got {json.dumps(value)[:80]}")


def rows_table(
    context: dict[str, Any], candidates: list[dict[str, Any]], kinds: dict[str, str]
) -> pa.Table:
    """One row per candidate, context broadcast; columns typed by `kinds`."""
    columns = {}
    n = len(candidates)
    for feature, kind in kinds.items():
        if feature in context:
            values = [context[feature]] * n
        else:
            values = [c.get(feature) for c in candidates]
        columns[feature] = pa.array(values, type=arrow_type(kind))
    return pa.table(columns) if columns else pa.table({"_": [0] * n})


def validate_rank(
    body: Any, kinds: dict[str, str], max_candidates: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(body, dict):
        raise RequestError(422, "the body must be a JSON object with 'candidates'")
    unknown_keys = set(body) - {"context", "candidates", "request_id"}
    if unknown_keys:
        raise RequestError(422, f"unknown field(s) {sorted(unknown_keys)} in the body")
    context = body.get("context", {})
    candidates = body.get("candidates")
    if not isinstance(context, dict):
        raise RequestError(422, "'context' must be an object of feature values")
    if not isinstance(candidates, list) or not candidates:
        raise RequestError(422, "'candidates' must be a non-empty list of objects")
    if len(candidates) > max_candidates:
        raise RequestError(413, f"{len(candidates)} candidates; the limit is {max_candidates}")
    for where, features in [("context", context)] + [
        (f"candidates[{i}]", c) for i, c in enumerate(candidates)
    ]:
        if not isinstance(features, dict):
            raise RequestError(422, f"{where} must be an object of feature values")
        for name, value in features.items():
            if name not in kinds:
                raise RequestError(
                    422, f"unknown feature {name!r} in {where}; the model reads {sorted(kinds)}"
                )
            _check_value(name, kinds[name], value)
    return context, candidates
