"""Input kinds: how a raw column's values are read — int (ids used as they are), float,
string (ids hashed), or a list of one of them. The model records them; every reader (files,
streams, HTTP) reads by them. Torch-free, so file tools load it cheaply."""

from __future__ import annotations

import functools

import pyarrow as pa


def value_kind(t: pa.DataType) -> str:
    """The JSON-facing kind of an input column: int, float, string, or list<…> of one."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{value_kind(t.value_type)}>"
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    return "string"


@functools.cache
def arrow_type(kind: str) -> pa.DataType:
    """Inverse of `value_kind`."""
    if kind.startswith("list<"):
        return pa.list_(arrow_type(kind[5:-1]))
    return {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}[kind]


# What pads a list in a rectangular tensor ([N, L]: ONNX graphs, /v2 infer): an element equal to
# it is not a value. NaN pads float lists. (An id -1 or a string "" in a list is read as padding.)
LIST_PAD: dict[str, object] = {"int": -1, "string": ""}
