"""The Open Inference Protocol (KServe v2 REST, what Triton and KServe speak) for the ranking
model: its tensors → the same `CandidateRows` as a /v1/rank body, its answers ← the same scores.

Why: users who already run Triton or KServe clients (`tritonclient`, KServe's SDK, a load
balancer that probes `/v2/health/ready`) can call streamrec without a second client. Scoring goes
through exactly /v1/rank's path — cache, batcher, variants, versions, metrics — so the two APIs
cannot disagree.

The mapping, one input tensor per feature (`GET /v2/models/{name}` lists them):
- an `int` feature is an integer tensor (INT64 declared; any INT*/UINT* read), a `float`
  feature a floating one (FP32 declared; FP16/FP64 and integers read), a `string` feature BYTES;
- a scalar feature's shape is `[N]` or `[N, 1]`: one value per candidate;
- a list feature's shape is `[N, L]`, each row padded to L with `-1` (ints), `""` (strings) or
  NaN (floats) as an ONNX graph of `streamrec export --format onnx` reads it, or a BYTES tensor
  `[N]` whose elements are JSON arrays (`"[\\"Comedy\\"]"`: nothing reserved);
- a tensor whose first dimension is 1 while others have N is broadcast to every candidate —
  how the context (the user) is sent once;
- missing values: an input left out is missing for every row; a NaN in a float tensor is
  missing at that row (it reads the training file's empty cell, as a null does on /v1/rank).
  Infinities and values beyond int64 are refused.
Data may be JSON (`data`, flat or nested in row-major order) or the binary tensor extension
(`Inference-Header-Content-Length`, `parameters.binary_data_size`), as `tritonclient` sends by
default; outputs are binary when the request or the output asks (`binary_data_output`,
`binary_data`). One output per task, named as /v1/rank names its scores, FP32, shape `[N]`.
Every way a request can be wrong is a RequestError (4xx) naming the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from streamrec.json_records import python_type
from streamrec.kinds import LIST_PAD
from streamrec.serving.request import CandidateRows, RequestError, TypedBodyReader, check_size

_INTEGER_TYPES = {
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
}
_FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
DECLARED_DATATYPE = {"int": "INT64", "float": "FP32", "string": "BYTES"}
_INT64_MAX = 2**63 - 1


class InferTensor(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    datatype: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    data: list[Any] | None = None


class RequestedOutput(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class InferRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    inputs: Annotated[list[InferTensor], msgspec.Meta(min_length=1)]
    id: str | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None


@dataclass
class InferCall:
    """A decoded infer request: the rows to score, its id, and which outputs to send how."""

    rows: CandidateRows
    request_id: str | None
    outputs: list[str]  # task names, in the order asked (all tasks when none were asked)
    binary: list[bool]  # per output: raw bytes after the JSON header instead of `data`


def tensor_metadata(kinds: dict[str, str], tasks: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The inputs and outputs of `GET /v2/models/{name}`: one input per feature (-1: any size;
    a list feature has a second dimension), one FP32 output per task."""
    inputs = []
    for feature, kind in kinds.items():
        inner = kind[5:-1] if kind.startswith("list<") else kind
        shape = [-1, -1] if kind.startswith("list<") else [-1]
        inputs.append({"name": feature, "datatype": DECLARED_DATATYPE[inner], "shape": shape})
    outputs = [{"name": t, "datatype": "FP32", "shape": [-1]} for t in tasks]
    return {"inputs": inputs, "outputs": outputs}


class InferRequestReader:
    """Decodes `/v2/models/{name}/infer` bodies for one model's input kinds and tasks."""

    def __init__(self, kinds: dict[str, str], tasks: list[str]) -> None:
        self.kinds = kinds
        self.tasks = tasks
        self._reader = TypedBodyReader(InferRequest, "infer")
        self._scalar = {k: list[python_type(k)] for k in ("int", "float", "string")}
        self._list_json = {
            k: msgspec.json.Decoder(python_type(k)) for k in kinds.values() if k.startswith("list<")
        }

    def read(
        self, body: bytes, header_length: str | None, max_bytes: int, max_rows: int
    ) -> InferCall:
        """The call a body asks for; RequestError (413 / 422) naming what is wrong."""
        check_size(body, max_bytes)
        header, binary = _split(body, header_length)
        request = self._reader.decode(header)
        tensors: dict[str, tuple[int, list[Any]]] = {}  # feature → (first dim, its rows)
        offset = 0
        for tensor in request.inputs:
            if tensor.name not in self.kinds:
                raise RequestError(
                    422, f"unknown input '{tensor.name}'; the model reads {sorted(self.kinds)}"
                )
            if tensor.name in tensors:
                raise RequestError(422, f"input '{tensor.name}' is given twice")
            values, offset = _values(tensor, binary, offset)
            tensors[tensor.name] = self._rows(tensor, values)
        if offset != len(binary):
            raise RequestError(
                422, f"{len(binary) - offset} bytes of binary data follow the inputs that "
                "declare binary_data_size; they belong to no input"
            )
        n = max(first for first, _ in tensors.values())
        if n == 0:
            raise RequestError(422, "the inputs hold no rows")
        if n > max_rows:
            raise RequestError(413, f"{n} rows; the limit is {max_rows}")
        columns: dict[str, list[Any]] = {}
        missing: dict[str, int] = {}
        shared = []  # the inputs given once for every row: a model may use them once
        for feature in self.kinds:
            if feature not in tensors:
                columns[feature] = [None] * n
                missing[feature] = n
                shared.append(feature)
                continue
            first, rows = tensors[feature]
            if first not in (1, n):
                raise RequestError(
                    422, f"input '{feature}' has {first} rows, others {n}: give every input N "
                    "rows, or 1 to broadcast it"
                )
            column = rows * n if first == 1 and n > 1 else rows
            if first == 1:
                shared.append(feature)
            if absent := column.count(None):
                missing[feature] = absent
            columns[feature] = column
        outputs, binary_outputs = self._outputs(request)
        rows_read = CandidateRows(columns, n, missing, frozenset(shared))
        return InferCall(rows_read, request.id, outputs, binary_outputs)

    def _rows(self, tensor: InferTensor, values: list[Any]) -> tuple[int, list[Any]]:
        """(first dimension, one value per row) of a tensor for its feature's kind."""
        kind = self.kinds[tensor.name]
        shape = tensor.shape
        if not shape:
            raise RequestError(422, f"input '{tensor.name}' has no shape; give [N]")
        first = shape[0]
        if not kind.startswith("list<"):
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise RequestError(
                    422, f"input '{tensor.name}' has shape {shape}; a {kind} feature is [N] "
                    "or [N, 1]"
                )
            return first, self._typed(tensor, kind, values)
        inner = kind[5:-1]
        if len(shape) == 2:
            typed = self._typed(tensor, inner, values)
            width = shape[1]
            pad = LIST_PAD.get(inner)  # None for floats: NaN, which `_typed` made None
            return first, [
                [v for v in typed[i * width : (i + 1) * width] if v is not None and v != pad]
                for i in range(first)
            ]
        if len(shape) == 1 and tensor.datatype == "BYTES":
            decode = self._list_json[kind].decode
            rows = []
            for i, text in enumerate(self._typed(tensor, "string", values)):
                try:
                    rows.append(decode(text))
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    raise RequestError(
                        422, f"input '{tensor.name}' row {i} is not a JSON array of {inner}: {e}"
                    ) from None
            return first, rows
        raise RequestError(
            422, f"input '{tensor.name}' has shape {shape}; a {kind} feature is [N, L], or a "
            "BYTES [N] of JSON arrays for lists of different lengths"
        )

    def _typed(self, tensor: InferTensor, kind: str, values: list[Any]) -> list[Any]:
        """The values as the Python values /v1/rank reads for `kind` (NaN → None)."""
        datatype = tensor.datatype
        allowed = {
            "int": _INTEGER_TYPES.keys(),
            "float": _INTEGER_TYPES.keys() | _FLOAT_TYPES.keys(),
            "string": {"BYTES"},
        }[kind]
        if datatype not in allowed:
            raise RequestError(
                422, f"input '{tensor.name}' is {datatype}; its feature reads {kind} "
                f"({DECLARED_DATATYPE[kind]})"
            )
        if isinstance(values, np.ndarray):  # binary data: already typed by its datatype
            if kind == "float":
                floats = values.astype(np.float64)
                if np.isinf(floats).any():
                    raise RequestError(422, f"input '{tensor.name}' holds an infinite value")
                if not np.isnan(floats).any():
                    return floats.tolist()
                return [None if math.isnan(v) else v for v in floats.tolist()]
            if values.dtype == np.uint64 and (values > _INT64_MAX).any():
                raise RequestError(422, f"input '{tensor.name}' holds a value beyond int64")
            return values.astype(np.int64).tolist()
        try:
            return msgspec.convert(values, self._scalar[kind])
        except msgspec.ValidationError as e:
            raise RequestError(422, f"input '{tensor.name}': {e}") from None

    def _outputs(self, request: InferRequest) -> tuple[list[str], list[bool]]:
        everything_binary = bool(request.parameters.get("binary_data_output", False))
        if not request.outputs:
            return list(self.tasks), [everything_binary] * len(self.tasks)
        names, binary = [], []
        for output in request.outputs:
            if output.name not in self.tasks:
                raise RequestError(
                    422, f"unknown output '{output.name}'; the model's outputs are {self.tasks}"
                )
            names.append(output.name)
            binary.append(bool(output.parameters.get("binary_data", everything_binary)))
        return names, binary


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a body (binary data follows the header when the
    `Inference-Header-Content-Length` header is given)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise RequestError(
            422, f"Inference-Header-Content-Length is {header_length!r}; the body has "
            f"{len(body)} bytes"
        )
    cut = int(header_length)
    return body[:cut], body[cut:]


def _values(tensor: InferTensor, binary: bytes, offset: int) -> tuple[Any, int]:
    """(the tensor's values — a numpy array from binary data, a flat list from JSON, a list of
    bytes objects for binary BYTES —, the offset after them in `binary`)."""
    count = math.prod(tensor.shape)
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise RequestError(422, f"input '{tensor.name}' has neither data nor binary_data_size")
        flat = _flatten(tensor.data)
        if len(flat) != count:
            raise RequestError(
                422, f"input '{tensor.name}' has {len(flat)} values; its shape "
                f"{tensor.shape} holds {count}"
            )
        return flat, offset
    if tensor.data is not None:
        raise RequestError(422, f"input '{tensor.name}' has both data and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(422, f"input '{tensor.name}': binary_data_size is {size!r}")
    if offset + size > len(binary):
        raise RequestError(
            422, f"input '{tensor.name}' declares {size} binary bytes; "
            f"{len(binary) - offset} remain in the body (binary data follows the JSON "
            "header, whose length the Inference-Header-Content-Length header gives)"
        )
    chunk = binary[offset:offset + size]
    if tensor.datatype == "BYTES":
        return _bytes_elements(tensor.name, chunk, count), offset + size
    dtype = _INTEGER_TYPES.get(tensor.datatype) or _FLOAT_TYPES.get(tensor.datatype)
    if dtype is None:
        raise RequestError(422, f"input '{tensor.name}' has unknown datatype {tensor.datatype}")
    itemsize = np.dtype(dtype).itemsize
    if size != count * itemsize:
        raise RequestError(
            422, f"input '{tensor.name}' declares {size} binary bytes; shape {tensor.shape} of "
            f"{tensor.datatype} is {count * itemsize}"
        )
    return np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")), offset + size


def _bytes_elements(name: str, chunk: bytes, count: int) -> list[str]:
    """The strings of a binary BYTES tensor: each a 4-byte little-endian length, then UTF-8."""
    values, at = [], 0
    for _ in range(count):
        if at + 4 > len(chunk):
            raise RequestError(422, f"input '{name}': its binary BYTES data ends early")
        length = int.from_bytes(chunk[at:at + 4], "little")
        at += 4
        if at + length > len(chunk):
            raise RequestError(422, f"input '{name}': its binary BYTES data ends early")
        try:
            values.append(chunk[at:at + length].decode())
        except UnicodeDecodeError:
            raise RequestError(422, f"input '{name}' holds bytes that are not UTF-8") from None
        at += length
    if at != len(chunk):
        raise RequestError(422, f"input '{name}': {len(chunk) - at} bytes after its elements")
    return values


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values of JSON tensor data given flat or nested."""
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def infer_response(
    model_name: str, version: str, request_id: str, call: InferCall, scores: np.ndarray,
    tasks: list[str],
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer answer: `scores` is [rows, tasks] float32; outputs as the
    call asked, binary ones after the JSON header."""
    outputs, raw = [], []
    for name, binary in zip(call.outputs, call.binary, strict=True):
        column = np.ascontiguousarray(scores[:, tasks.index(name)], dtype="<f4")
        output: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": [len(column)]}
        if binary:
            output["parameters"] = {"binary_data_size": column.nbytes}
            raw.append(column.tobytes())
        else:
            output["data"] = column.tolist()
        outputs.append(output)
    header = msgspec.json.encode({
        "model_name": model_name, "model_version": version, "id": request_id, "outputs": outputs,
    })
    if not raw:
        return header, {"content-type": "application/json"}
    return header + b"".join(raw), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
