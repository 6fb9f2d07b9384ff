"""A ranking model as one self-contained ONNX graph, and a Triton model repository around it.

Why: teams that already serve with Triton or KServe (onnxruntime backend) can take a streamrec
model without streamrec at serving time. The graph reads raw feature values, one input per
feature, and does everything `Schema.encode` and the tables do:

- ids → rows inside the graph: an `ai.onnx.ml` LabelEncoder per (feature, table) maps each id
  to its row of a frozen weight matrix; an id the table does not hold reads the zero row, as it
  does in `streamrec serve`;
- strings: tables are keyed by a 64-bit hash of each string, which ONNX cannot compute, so the
  encoder's keys are the strings themselves, collected from the model's training data (and
  `strings_from` files). A row whose string was never seen there is unreachable and counted in
  the report (e.g. ids learnt only from a stream);
- dense transforms (log1p, standardize, quantile), fills, missing indicators and one-/multi-hot
  encodings are plain tensor ops;
- ONNX has no null: a missing value is NaN (floats), `-1` (ints) or `""` (strings) — it reads
  what a null reads in `streamrec serve` (the missing token's row, or nothing). Lists are
  `[N, L]` tensors padded with the same values. (An id -1 or a string "" that the model
  learnt as a value is read as that value, not as missing);
- a sequence feature (`max_length`) keeps the last `max_length` ids of its row, as training
  does — pad on the right;
Outputs: one FP32 `[N]` per task, the calibrated probabilities `streamrec serve` returns.

A snapshot: the graph does not follow deltas (re-export to refresh it). Before writing, the
export scores a sample of the training data in onnxruntime and through the model itself and
refuses to write a graph that differs by more than `TOLERANCE`. Not exportable (refused with a
reason): per-id weights, two-tower retrievers, gbdt_lr's trees, disk tiers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from streamrec.batch import Batch
from streamrec.data.errors import DeadLetter
from streamrec.embedding.collection import Embedded, EmbeddingCollection
from streamrec.embedding.export import export_rows
from streamrec.fid import MISSING_FID, fids_from_arrow
from streamrec.kinds import LIST_PAD
from streamrec.models.persistence import LoadedModel, load_model
from streamrec.schema import DenseFeature, EncodingFeature, Schema
from streamrec.store.atomic import write_atomic

PAD_INT = LIST_PAD["int"]
PAD_STRING = LIST_PAD["string"]
TOLERANCE = 1e-5  # max |ONNX − streamrec| over the check sample, probabilities
ONNX_TYPES = {"int": "INT64", "float": "FP32", "string": "BYTES"}  # Triton / KServe names
_TRITON_TYPES = {"int": "TYPE_INT64", "float": "TYPE_FP32", "string": "TYPE_STRING"}


class OnnxExportError(ValueError):
    """The model cannot be exported, or its export would not score as the model does."""


@dataclass
class _Lookup:
    """One (feature, table) pair: the graph input of its row indices and how ids map to them."""

    input_name: str  # the exported torch graph's input: row indices [N] or [N, L]
    feature: str
    keys: list  # ids (ints) or strings
    rows: list[int]
    unknown_row: int  # the zero row
    pad_row: int  # the zero row that does not count towards a bag's length


@dataclass
class _Plan:
    torch_inputs: list[str] = field(default_factory=list)
    lookups: list[_Lookup] = field(default_factory=list)
    unreachable_rows: dict[str, int] = field(default_factory=dict)  # table → rows


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    name: str | None = None,
    strings_from: list[Path] | None = None,
    check_rows: int = 512,
) -> dict[str, Any]:
    """Write `out/<name>/1/model.onnx` and `out/<name>/config.pbtxt` (Triton's onnxruntime
    backend). `name` defaults to the config's `name` (what `/v2/models/{name}` serves). Returns
    a report: inputs, outputs, rows per table, unreachable rows, the check's max difference."""
    import onnx

    loaded = load_model(model_dir)
    schema = loaded.config.schema
    kinds = loaded.input_kinds
    _refuse_unexportable(loaded, schema)
    name = name or loaded.config.name
    dead = DeadLetter(None, strict=False)  # malformed rows read: skipped, and counted below
    strings = _known_strings(loaded, schema, kinds, strings_from or [], dead)
    sample = _check_sample(loaded, kinds, check_rows, strings_from or [], dead)
    model = loaded.model.eval()
    with torch.inference_mode():
        expected = model.predict(schema.encode(sample, with_labels=False)).numpy()
    plan = _Plan()
    wrapper = _ExportedModel(model, schema, kinds, strings, plan)
    _refuse_oversize(wrapper, plan)
    graph = _trace(wrapper, plan, kinds, schema, loaded)
    _add_id_encoders(graph, plan, schema, kinds)
    onnx.checker.check_model(graph)
    serialized = graph.SerializeToString()
    got = _score(serialized, onnx_inputs(sample, kinds))
    tasks = schema.task_names or ["label"]
    difference = float(np.abs(np.stack(got, axis=1) - expected).max()) if len(sample) else 0.0
    if difference > TOLERANCE:
        raise OnnxExportError(
            f"the exported graph scores {len(sample)} training rows up to {difference:.2e} away "
            f"from the model (tolerance {TOLERANCE}); not written"
        )
    repository = Path(out) / name
    (repository / "1").mkdir(parents=True, exist_ok=True)
    write_atomic(repository / "1" / "model.onnx", serialized)  # a reader sees old or new
    write_atomic(repository / "config.pbtxt", triton_config(name, kinds, schema, tasks))
    return {
        "repository": str(repository),
        "model": str(repository / "1" / "model.onnx"),
        "name": name,
        "inputs": {f: kinds[f] for f in schema.input_columns(with_labels=False)},
        "outputs": tasks,
        "table_rows": {
            lookup.input_name: lookup.unknown_row for lookup in plan.lookups
            if lookup.input_name.startswith("rows:")
        },
        "unreachable_rows": plan.unreachable_rows,
        "checked_rows": len(sample),
        "rejected_rows": dead.count,  # malformed rows of the files read for strings and check
        "max_abs_difference": difference,
        "bytes": (repository / "1" / "model.onnx").stat().st_size,
    }


def _refuse_unexportable(loaded: LoadedModel, schema: Schema) -> None:
    if loaded.config.model.name == "two_tower":
        raise OnnxExportError("a two-tower retriever is not exportable to ONNX (rankers are)")
    if loaded.config.model.name == "gbdt_lr":
        raise OnnxExportError(
            "gbdt_lr is not exportable to ONNX: its trees run in LightGBM, outside the torch "
            "graph; serve it with `streamrec serve`"
        )
    for f in schema.embeddings:
        if f.weights:
            raise OnnxExportError(f"feature {f.name!r} has per-id weights: not exportable yet")
    for collection in loaded.model.modules():
        if isinstance(collection, EmbeddingCollection) and collection.has_disk_tier:
            raise OnnxExportError("a model with a disk tier is not exportable (its rows are not "
                                  "all in memory): export it with `streamrec export` first")
    adaptive = sorted(n for n, t in loaded.config.table_configs().items() if t.rare_dim)
    if adaptive:
        raise OnnxExportError(
            f"tables {adaptive} have frequency-adaptive widths (rare_dim), which the ONNX "
            "graph does not assemble yet: serve the model with `streamrec serve`"
        )


PROTOBUF_LIMIT = 2**31 - 1  # bytes: one ONNX model file


def _refuse_oversize(wrapper: nn.Module, plan: _Plan) -> None:
    """An ONNX model is one protobuf, at most 2 GB: refuse before building one that is not."""
    weights = sum(b.numel() * b.element_size() for b in wrapper.buffers())
    weights += sum(p.numel() * p.element_size() for p in wrapper.parameters())
    keys = sum(
        sum(len(k) + 2 for k in lookup.keys) if lookup.keys and isinstance(lookup.keys[0], str)
        else 9 * len(lookup.keys)
        for lookup in plan.lookups
    ) + sum(9 * len(lookup.rows) for lookup in plan.lookups)
    if weights + keys > 0.95 * PROTOBUF_LIMIT:
        raise OnnxExportError(
            f"the graph would hold {(weights + keys) / 2**30:.1f} GiB of rows and ids, over "
            "ONNX's 2 GB limit for one model: export fewer rows (`streamrec export "
            "--drop-zero-rows`, a table `capacity`) or serve it with `streamrec serve`"
        )


def _known_strings(
    loaded: LoadedModel, schema: Schema, kinds: dict[str, str], extra: list[Path],
    dead: DeadLetter,
) -> dict[str, pa.Array]:
    """feature → the distinct strings seen in the training data and `extra` files, for every
    string feature of an embedding or encoding."""
    from streamrec.data.formats import read_records
    from streamrec.data.splits import open_splits

    wanted = [
        f.name for f in [*schema.embeddings, *schema.encodings]
        if kinds.get(f.name, "").removeprefix("list<").startswith("string")
    ]
    if not wanted:
        return {}
    seen: dict[str, list[pa.Array]] = {f: [] for f in wanted}
    data = loaded.config.data

    def collect(source: Callable[[], Iterable[pa.RecordBatch]]) -> None:
        for batch in source():
            for f in wanted:
                if f in batch.schema.names:
                    column = batch.column(f)
                    flat = column.flatten() if pa.types.is_list(column.type) else column
                    seen[f].append(pc.unique(flat.cast(pa.string())))

    try:
        splits = open_splits(data, dead, dict(kinds))
        for source in [splits.train] + ([splits.valid] if splits.valid else []):
            collect(source)
    except Exception as e:  # any unreadable data: say which, and what to do
        if not extra:
            raise OnnxExportError(
                f"the model's training data cannot be read ({e}); its strings are the keys of "
                "the exported tables: name files holding them with --strings-from"
            ) from None
    for path in extra:
        collect(lambda path=path: read_records(str(path), data.format, dead))
    return {
        f: pc.unique(pa.chunked_array(parts, pa.string())).drop_null()
        if parts else pa.array([], pa.string())
        for f, parts in seen.items()
    }


def _check_sample(
    loaded: LoadedModel, kinds: dict[str, str], rows: int, extra: list[Path], dead: DeadLetter
) -> pa.Table:
    """The first `rows` training rows — or, when the training data is gone, of the first
    `extra` file (`--strings-from`)."""
    from streamrec.data.formats import read_records
    from streamrec.data.splits import DatasetSplits, open_splits

    data = loaded.config.data
    try:
        return open_splits(data, dead, dict(kinds)).sample(rows)
    except Exception:  # the data is gone: check on the files given instead, if any
        if not extra:
            raise OnnxExportError(
                "the model's training data cannot be read: the export checks its graph "
                "against the model on it — name a file of such rows with --strings-from"
            ) from None
    given = DatasetSplits(lambda: read_records(str(extra[0]), data.format, dead, kinds=kinds),
                          None)
    return given.sample(rows)


class _ExportBatch(Batch):
    """A Batch whose ids are already row indices (`rows`: graph input name → [N, L] int64),
    and whose size is traced (a dynamic batch dimension)."""

    rows: dict[str, torch.Tensor]

    @property
    def size(self) -> Any:  # a traced dimension, not a Python int
        return self.dense.shape[0]


class _FrozenCollection(nn.Module):
    """Stands in for an EmbeddingCollection during export: each table's rows frozen into a
    weight matrix with two zero rows appended (R: unknown ids, R + 1: padding), pooled with
    plain tensor ops exactly as `FeaturePooling` pools."""

    def __init__(
        self,
        collection: EmbeddingCollection,
        prefix: str,
        strings: dict[str, pa.Array],
        kinds: dict[str, str],
        plan: _Plan,
    ) -> None:
        super().__init__()
        self.groups = [list(p.features) for p in collection._plans]
        self.features = collection.features
        self.input_of: dict[str, str] = {}
        self.weight_of: dict[str, str] = {}
        self.missing_row: dict[str, int] = {}
        for i, (table_name, table) in enumerate(collection.tables.items()):
            exported = export_rows(table)
            fids = exported.fids.numpy()
            weights = exported.dequantize().float()
            r = weights.shape[0]
            zero_rows = weights.new_zeros(2, weights.shape[1])  # unknown ids, padding
            self.register_buffer(f"w{i}", torch.cat([weights, zero_rows]))
            order = np.argsort(fids)
            sorted_fids = fids[order]
            at_missing = np.searchsorted(sorted_fids, MISSING_FID)
            held = at_missing < r and sorted_fids[at_missing] == MISSING_FID
            missing_row = int(order[at_missing]) if held else r
            reached = np.zeros(r, bool)
            for feature, f in self.features.items():
                if f.table_name != table_name:
                    continue
                name = f"rows:{prefix}{feature}:{table_name}"
                self.input_of[feature] = name
                self.weight_of[feature] = f"w{i}"
                self.missing_row[feature] = missing_row
                if kinds[feature].removeprefix("list<").startswith("string"):
                    texts = strings[feature]
                    hashed = fids_from_arrow(texts)
                    at = np.clip(np.searchsorted(sorted_fids, hashed), 0, max(r - 1, 0))
                    found = (sorted_fids[at] == hashed) if r else np.zeros(len(hashed), bool)
                    keys = texts.filter(pa.array(found)).to_pylist()
                    rows = order[at[found]]
                else:
                    keys, rows = fids.tolist(), np.arange(r)
                reached[rows] = True
                plan.lookups.append(_Lookup(name, feature, keys, rows.tolist(), r, r + 1))
                plan.torch_inputs.append(name)
            if missing_row < r:
                reached[missing_row] = True
            if r and not reached.all():
                plan.unreachable_rows[table_name] = int((~reached).sum())

    def forward(self, batch: _ExportBatch) -> Embedded:
        out = Embedded()
        for names in self.groups:
            bags = {f: self._bag(batch, f) for f in names}
            out.add_group(names, torch.stack([self._pool(f, *bags[f]) for f in names], dim=1))
            for f in names:
                if self.features[f].max_length is not None:  # (padded rows, mask) as DIN reads
                    index, present = bags[f]
                    weight = getattr(self, self.weight_of[f])
                    out.sequences[f] = (F.embedding(index, weight), present)
        return out

    def _bag(self, batch: _ExportBatch, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(row indices [N, L], real-id mask [N, L]) of a feature's bag: a sequence keeps its
        last `max_length` ids, left-aligned (`JaggedIds.truncate_last`, `pad_sequence`); an
        empty bag with `missing: token` holds the missing token's row."""
        index = batch.rows[self.input_of[feature]]
        if index.dim() == 1:
            index = index.unsqueeze(1)
        weight = getattr(self, self.weight_of[feature])
        pad = weight.shape[0] - 1
        f = self.features[feature]
        present = index != pad
        if f.max_length is not None:  # the client pads on the right: real ids come first
            length = present.sum(dim=1, keepdim=True)
            start = (length - f.max_length).clamp(min=0)
            position = start + torch.arange(f.max_length).unsqueeze(0)
            column = position.clamp(max=index.shape[1] - 1)
            present = position < length
            index = torch.where(present, index.gather(1, column), torch.full_like(column, pad))
        if f.missing == "token":
            empty = ~present.any(dim=1, keepdim=True)
            first = torch.arange(index.shape[1]).unsqueeze(0) == 0
            token = torch.full_like(index, self.missing_row[feature])
            index = torch.where(empty & first, token, index)
            present = present | (empty & first)
        return index, present

    def _pool(self, feature: str, index: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[N, dim]: the feature's bag pooled as `FeaturePooling` pools it."""
        weight = getattr(self, self.weight_of[feature])
        rows = F.embedding(index, weight) * present.unsqueeze(-1)  # padding rows are zero
        total = rows.sum(dim=1)
        count = present.sum(dim=1, keepdim=True).float().clamp(min=1)
        pooling = self.features[feature].pooling
        if pooling == "mean":
            total = total / count
        elif pooling == "sqrtn":
            total = total * count.rsqrt()
        return total


class _ExportedModel(nn.Module):
    """raw dense values, encoding indices and row indices (the torch graph's inputs, in
    `plan.torch_inputs` order) → one [N] probability per task."""

    def __init__(
        self, model: nn.Module, schema: Schema, kinds: dict[str, str],
        strings: dict[str, pa.Array], plan: _Plan,
    ) -> None:
        super().__init__()
        self.schema = schema
        self.dense_inputs = [f.name for f in schema.dense]
        self.encoding_inputs = [f"encoding:{f.name}" for f in schema.encodings]
        plan.torch_inputs += self.dense_inputs + self.encoding_inputs
        for f in schema.encodings:
            vocabulary = f.vocabulary or []
            plan.lookups.append(
                _Lookup(f"encoding:{f.name}", f.name, _typed_keys(vocabulary, kinds[f.name]),
                        list(range(len(vocabulary))), f.width - 1, f.width)
            )
        parents = dict(model.named_modules())
        for path, module in list(model.named_modules()):
            if isinstance(module, EmbeddingCollection):
                parent_path, _, attr = path.rpartition(".")
                frozen = _FrozenCollection(module, f"{path}:", strings, kinds, plan)
                setattr(parents[parent_path] if parent_path else model, attr, frozen)
        self.model = model
        self.names = plan.torch_inputs

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.names, inputs, strict=True))
        n = inputs[0].shape[0]
        blocks = [_dense_block(named[f.name], f) for f in self.schema.dense]
        blocks += [
            _encoding_block(named[f"encoding:{f.name}"], f) for f in self.schema.encodings
        ]
        dense = torch.cat(blocks, dim=1) if blocks else torch.zeros(n, 0)
        batch = _ExportBatch(dense[:, :0], dense)
        batch.rows = {k: v for k, v in named.items() if k.startswith("rows:")}
        probabilities = self.model.predict(batch)
        return tuple(probabilities[:, i] for i in range(probabilities.shape[1]))


def _typed_keys(vocabulary: list[str], kind: str) -> list:
    """An encoding's vocabulary as the keys its input carries (ints for an int feature)."""
    if not kind.removeprefix("list<").startswith("int"):
        return list(vocabulary)
    return [int(v) for v in vocabulary if v.lstrip("-").isdigit()]


def _dense_block(x: torch.Tensor, f: DenseFeature) -> torch.Tensor:
    """`Schema._dense_block` in tensor ops: x float [N] → [N, width]."""
    x = x.float()
    missing = torch.isnan(x)
    if f.transform == "log1p":
        x = torch.sign(x) * torch.log1p(torch.abs(x))
    elif f.transform == "standardize":
        x = (x - f.mean) / (f.std if f.std and f.std > 0 else 1.0)
    elif f.transform == "quantile":
        x = _interpolate(x, torch.tensor(f.quantiles, dtype=torch.float64))
    x = torch.where(missing, torch.full_like(x, f.fill), x)
    if f.missing_indicator:
        return torch.stack([x, missing.float()], dim=1)
    return x.unsqueeze(1)


def _interpolate(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """np.interp(x, knots, linspace(0, 1, len(knots))) for increasing knots, in tensor ops."""
    m = knots.numel()
    if m == 1:
        return torch.where(x < knots[0], torch.zeros_like(x), torch.ones_like(x))
    xd = x.double()
    k = ((xd.unsqueeze(1) >= knots.unsqueeze(0)).sum(dim=1) - 1).clamp(0, m - 2)
    x0, x1 = knots[k], knots[k + 1]
    width = x1 - x0
    t = torch.where(width > 0, (xd - x0) / torch.where(width > 0, width, torch.ones_like(width)),
                    torch.zeros_like(xd))
    y = (k.double() + t) / (m - 1)
    y = torch.where(xd <= knots[0], torch.zeros_like(y), y)
    y = torch.where(xd >= knots[-1], torch.ones_like(y), y)
    return y.float()


def _encoding_block(index: torch.Tensor, f: EncodingFeature) -> torch.Tensor:
    """Vocabulary indices [N] or [N, L] (width − 1: out of vocabulary, width: padding) → the
    multi-hot [N, width] `Schema._encoding_block` writes."""
    if index.dim() == 1:
        index = index.unsqueeze(1)
    width = f.width
    return F.one_hot(index, width + 1)[:, :, :width].amax(dim=1).float()


def _trace(
    wrapper: _ExportedModel, plan: _Plan, kinds: dict[str, str], schema: Schema,
    loaded: LoadedModel,
):
    """The torch graph, traced on two rows of example indices, batch and list axes dynamic."""
    import io

    import onnx

    examples = []
    for name in plan.torch_inputs:
        feature = name.split(":")[-2] if name.startswith("rows:") else name.split(":")[-1]
        listed = kinds.get(feature, "").startswith("list<")
        shape = (2, 3) if listed else (2,)
        examples.append(torch.zeros(shape, dtype=torch.float32 if name in wrapper.dense_inputs
                                    else torch.int64))
    if not examples:
        raise OnnxExportError("the model reads no inputs")
    dynamic = {}
    for name, example in zip(plan.torch_inputs, examples, strict=True):
        dynamic[name] = {0: "rows", 1: f"{name}_length"} if example.dim() == 2 else {0: "rows"}
    tasks = schema.task_names or ["label"]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(
                wrapper, tuple(examples), buffer, input_names=plan.torch_inputs,
                output_names=tasks, dynamic_axes=dynamic, opset_version=17, dynamo=False,
            )
        except Exception as e:  # a model whose forward does not trace
            raise OnnxExportError(
                f"model {loaded.config.model.name!r} does not export to ONNX: "
                f"{type(e).__name__}: {e}"
            ) from None
    return onnx.load_from_string(buffer.getvalue())


def _add_id_encoders(graph, plan: _Plan, schema: Schema, kinds: dict[str, str]) -> None:
    """Put the raw inputs in front of the torch graph: one per feature, each id input through
    its LabelEncoders (id or string → row / vocabulary index) into the indices the torch graph
    reads."""
    from onnx import TensorProto, helper

    g = graph.graph
    traced = {i.name for i in g.input}
    kept = [i for i in g.input if i.name in [f.name for f in schema.dense]]
    nodes = []
    for lookup in plan.lookups:
        if lookup.input_name not in traced:
            continue  # a feature the model does not read: the tracer dropped it
        kind = kinds[lookup.feature]
        strings = kind.removeprefix("list<").startswith("string")
        keys = {"keys_strings": lookup.keys} if strings else {"keys_int64s": lookup.keys}
        pad = [PAD_STRING] if strings else [PAD_INT]
        keys_list = list(keys.values())[0]
        if pad[0] not in set(keys_list):  # padding reads the non-counting zero row
            keys = {k: [*v, *pad] for k, v in keys.items()}
            values = [*lookup.rows, lookup.pad_row]
        else:
            values = lookup.rows
        nodes.append(helper.make_node(
            "LabelEncoder", [lookup.feature], [lookup.input_name], domain="ai.onnx.ml",
            values_int64s=values, default_int64=lookup.unknown_row, **keys,
        ))
    for i in list(g.input):
        if i.name not in {k.name for k in kept}:
            g.input.remove(i)
    present = {i.name for i in g.input}
    for feature in schema.input_columns(with_labels=False):
        if feature in present or feature not in kinds:
            continue
        kind = kinds[feature]
        inner = kind.removeprefix("list<").removesuffix(">")
        element = {"int": TensorProto.INT64, "float": TensorProto.FLOAT,
                   "string": TensorProto.STRING}[inner]
        dims = ["rows", f"{feature}_length"] if kind.startswith("list<") else ["rows"]
        g.input.append(helper.make_tensor_value_info(feature, element, dims))
    for node in reversed(nodes):
        g.node.insert(0, node)
    graph.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))


def onnx_inputs(table: pa.Table, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """The exported graph's inputs for the rows of `table`: one array per feature the graph
    reads — ints int64, floats float32, strings object arrays; nulls as NaN / `PAD_INT` /
    `PAD_STRING` (missing); lists padded to their longest with the same values."""
    inputs = {}
    for feature, kind in kinds.items():
        if feature not in table.column_names:
            continue
        column = table.column(feature)
        inner = kind.removeprefix("list<").removesuffix(">")
        pad = {"string": PAD_STRING, "int": PAD_INT, "float": float("nan")}[inner]
        dtype = {"string": object, "int": np.int64, "float": np.float32}[inner]
        if kind.startswith("list<"):
            lists = [[pad if x is None else x for x in v or []] for v in column.to_pylist()]
            width = max((len(v) for v in lists), default=0)
            padded = [v + [pad] * (width - len(v)) for v in lists]
            inputs[feature] = np.array(padded, dtype=dtype).reshape(len(lists), width)
        else:
            values = [pad if v is None else v for v in column.to_pylist()]
            inputs[feature] = np.array(values, dtype=dtype)
    return inputs


def _score(model_bytes: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in wanted})


def triton_config(name: str, kinds: dict[str, str], schema: Schema, tasks: list[str]) -> str:
    """`config.pbtxt` for Triton's onnxruntime backend (no batching axis of Triton's own: the
    first dimension is the candidates)."""
    inputs = []
    for feature in schema.input_columns(with_labels=False):
        if feature not in kinds:
            continue
        kind = kinds[feature]
        inner = kind.removeprefix("list<").removesuffix(">")
        dims = "[ -1, -1 ]" if kind.startswith("list<") else "[ -1 ]"
        inputs.append(
            f'  {{ name: "{feature}" data_type: {_TRITON_TYPES[inner]} dims: {dims} }}'
        )
    outputs = [f'  {{ name: "{t}" data_type: TYPE_FP32 dims: [ -1 ] }}' for t in tasks]
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + ",\n".join(outputs) + "\n]\n"
    )
