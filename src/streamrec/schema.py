"""Feature declarations and the one function that turns raw records into a Batch.

Three feature kinds, as in the classic recsys feature platform:

* `DenseFeature`     a number → transformed float (none / log1p / standardize / quantile-CDF);
* `EncodingFeature`  a small vocabulary → one-hot or multi-hot columns appended to `dense`,
                     with one out-of-vocabulary bucket;
* `EmbeddingFeature` a large id space → 64-bit fids (see `streamrec.fid`) looked up in the
                     DynamicTable the feature names; tables can be shared between features.

Missing values are explicit: a dense feature's `fill` (and optional indicator column), an
encoding's all-zero row, an embedding's `missing: token` fid or `missing: empty` bag.
Statistics that depend on data (means, quantiles, vocabularies) are learnt by `Schema.fit` and
stored in the schema itself, so a saved schema encodes serving requests exactly as training did.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamrec.batch import Batch, JaggedIds, RequestContext
from streamrec.fid import MISSING_FID, fids_from_arrow
from streamrec.kinds import value_kind

SECONDS_PER_UNIT = {"s": 1, "ms": 1_000, "us": 1_000_000}  # timestamp units in one second


class SchemaError(ValueError):
    """A record does not fit the schema (missing column, wrong type, bad label)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Label(_Strict):
    """One task's label column. Its values must be 0/1 (or true/false) unless one rule maps
    them: a threshold, a list of positive values, or a value map. Anything else is an error
    that names the value — never a silent 0.5 AUC."""

    name: str = Field(description="the label column")
    threshold: float | None = Field(
        default=None, description="label = 1 if value >= threshold (e.g. rating >= 4)"
    )
    positive: list[float | str] | None = Field(
        default=None, description="these raw values are 1, every other value 0 (e.g. [click])"
    )
    values: dict[str, float] | None = Field(
        default=None,
        description="raw value → label, e.g. {'-1': 0, '1': 1}; a value not listed is an error",
    )

    @model_validator(mode="before")
    @classmethod
    def _keys_as_text(cls, data: object) -> object:
        """YAML reads {-1: 0, 1: 1} with number keys; they are kept as text ('-1', '1')."""
        if isinstance(data, dict) and isinstance(data.get("values"), dict):
            data = {**data, "values": {label_key(k): v for k, v in data["values"].items()}}
        return data

    @model_validator(mode="after")
    def _one_rule(self) -> Label:
        rules = [r for r in ("threshold", "positive", "values") if getattr(self, r) is not None]
        if len(rules) > 1:
            raise ValueError(f"label {self.name!r}: give one of {rules}, not several")
        wrong = {k: v for k, v in (self.values or {}).items() if v not in (0, 1)}
        if wrong:
            raise ValueError(f"label {self.name!r}: `values` must map to 0 or 1, not {wrong}")
        return self

    def to_binary(self, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(float32 labels, bad mask) of raw values by this label's rule; missing is bad."""
        missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
        if self.positive is not None:
            positives = pa.array([label_key(v) for v in self.positive])
            hit = pc.is_in(_as_text(column), value_set=positives)
            return np.asarray(hit.to_numpy(zero_copy_only=False), np.float32), missing
        if self.values is not None:
            keys = list(self.values)
            index = pc.index_in(_as_text(column), value_set=pa.array(keys))
            mapped = np.array([*self.values.values(), np.nan], np.float32)
            out = mapped[np.asarray(pc.fill_null(index, len(keys)).to_numpy())]
            return out, missing | np.isnan(out)
        try:
            values = np.asarray(
                column.cast(pa.float32()).to_numpy(zero_copy_only=False), np.float32
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # some text is no number
            values = np.array([_number(v) for v in column.to_pylist()], np.float32)
            missing = missing | np.isnan(values)
        if self.threshold is not None:
            return (values >= self.threshold).astype(np.float32), missing
        return values, missing | ((values != 0) & (values != 1))

    def rule_hint(self) -> str:
        return (
            "labels are 0/1 — set `threshold` (e.g. 4 for ratings ≥ 4), `positive` (the "
            "values meaning 1) or `values` (a map) on the label"
        )


def label_key(value: object) -> str:
    """A raw label value as text, numbers without a trailing .0 (-1.0 and -1 are one key)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _as_text(column: pa.Array) -> pa.Array:
    """Raw label values as the text `label_key` gives them."""
    if pa.types.is_floating(column.type):
        whole = pc.equal(column, pc.floor(column))
        as_int = pc.cast(pc.if_else(whole, column, 0), pa.int64()).cast(pa.string())
        return pc.if_else(whole, as_int, column.cast(pa.string()))
    if pa.types.is_boolean(column.type):
        return column.cast(pa.int8()).cast(pa.string())
    return column.cast(pa.string())


class DenseFeature(_Strict):
    name: str = Field(description="the column")
    transform: Literal["none", "log1p", "standardize", "quantile"] = Field(
        "none",
        description="none, log1p, standardize (fitted mean/std) or quantile (fitted CDF)",
    )
    fill: float = Field(0.0, description="value used for a missing entry, after the transform")
    missing_indicator: bool = Field(False, description="append a 0/1 'was missing' column")
    num_quantiles: int = Field(100, description="quantile buckets fitted")
    # Fitted statistics (filled by Schema.fit, saved with the model).
    mean: float | None = None
    std: float | None = None
    quantiles: list[float] | None = None

    @property
    def width(self) -> int:
        return 1 + int(self.missing_indicator)


InputKind = Literal["int", "string", "list<int>", "list<string>"]
KIND_HELP = (
    "the raw values' kind: int ids are used as they are, strings are hashed; declare it so "
    "that no reader has to guess (an online run that starts from no model needs it)"
)


class EncodingFeature(_Strict):
    name: str = Field(description="the column")
    kind: InputKind | None = Field(None, description=KIND_HELP)
    separator: str | None = Field(None, description="split strings into several values")
    max_size: int = Field(64, description="vocabulary size kept (most frequent)")
    min_count: int = Field(1, description="values seen fewer times are out-of-vocabulary")
    vocabulary: list[str] | None = None  # learnt by Schema.fit

    @property
    def width(self) -> int:
        if self.vocabulary is None:
            raise SchemaError(f"encoding feature {self.name!r} has no vocabulary: call fit()")
        return len(self.vocabulary) + 1  # +1: the out-of-vocabulary bucket


class EmbeddingFeature(_Strict):
    name: str = Field(description="the column")
    kind: InputKind | None = Field(None, description=KIND_HELP)
    table: str | None = Field(None, description="table name; default: the feature's own")
    separator: str | None = Field(None, description="multi-valued strings split on this")
    weights: str | None = Field(None, description="column of per-id weights (list<float>)")
    pooling: Literal["sum", "mean", "sqrtn"] = Field(
        "sum",
        description="how a multi-valued feature's rows combine (weights multiply them)",
    )
    max_length: int | None = Field(None, description="keep the last L ids (sequence features)")
    missing: Literal["token", "empty"] = Field(
        "token",
        description="token: a missing value is its own id; empty: it pools nothing",
    )

    @property
    def table_name(self) -> str:
        return self.table or self.name


class Schema(_Strict):
    labels: list[Label] = Field(default_factory=list, description="one per task")
    dense: list[DenseFeature] = Field(default_factory=list, description="numeric features")
    encodings: list[EncodingFeature] = Field(
        default_factory=list,
        description="small vocabularies, one-/multi-hot",
    )
    embeddings: list[EmbeddingFeature] = Field(
        default_factory=list,
        description="id features, looked up in dynamic tables",
    )
    group_id: str | None = Field(None, description="column grouping rows for GAUC (e.g. the user)")
    timestamp: str | None = Field(
        None,
        description="event-time column: TTL expiry, online event time (unit: timestamp_unit)",
    )
    timestamp_unit: Literal["s", "ms", "us"] = Field(
        "s",
        description="what the timestamp column counts since 1970: seconds, milliseconds or "
        "microseconds (converted to seconds when encoded)",
    )
    max_event_skew_seconds: float = Field(
        86_400.0, gt=0,
        description="stream records whose event time is more than this ahead of the trainer's "
        "clock are dead-lettered (a producer clock or unit error); the expiry clock never "
        "runs further ahead than this either",
    )
    max_event_age_seconds: float | None = Field(
        None, gt=0,
        description="stream records older than this are dead-lettered (off by default: replays "
        "of old logs must train)",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Schema:
        names = [f.name for f in (*self.dense, *self.encodings, *self.embeddings)]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature names must be unique, repeated: {sorted(dup)}")
        return self

    # ----------------------------------------------------------------- shape information
    @property
    def task_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def dense_width(self) -> int:
        return sum(f.width for f in self.dense) + sum(f.width for f in self.encodings)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in (*self.dense, *self.encodings, *self.embeddings)]

    def tables(self) -> dict[str, list[str]]:
        """table name → the embedding features that read it."""
        out: dict[str, list[str]] = {}
        for f in self.embeddings:
            out.setdefault(f.table_name, []).append(f.name)
        return out

    def input_columns(self, with_labels: bool = True) -> list[str]:
        cols = [f.name for f in (*self.dense, *self.encodings, *self.embeddings)]
        cols += [f.weights for f in self.embeddings if f.weights]
        if with_labels:
            cols += [lab.name for lab in self.labels]
        return cols

    def declared_kinds(self) -> dict[str, str]:
        """Input column → kind, as far as the schema declares it (dense features are floats,
        weight columns lists of floats)."""
        kinds = {f.name: "float" for f in self.dense}
        kinds.update({f.name: f.kind for f in (*self.encodings, *self.embeddings) if f.kind})
        kinds.update({f.weights: "list<float>" for f in self.embeddings if f.weights})
        return kinds

    # ----------------------------------------------------------------------------- fit
    def fit(self, data: pa.Table | pa.RecordBatch) -> Schema:
        """Learn standardisation, quantiles and vocabularies from a sample, and the kind of
        every id column the schema leaves undeclared (`kind`: int ids stay ids, strings are
        hashed), so a fitted schema says how every reader must read each input; returns a
        copy."""
        fitted = self.model_copy(deep=True)
        names = data.schema.names
        for f in (*fitted.encodings, *fitted.embeddings):
            if f.kind is None and f.name in names:
                f.kind = value_kind(data.schema.field(f.name).type)
        for f in fitted.dense:
            values = _dense_values(_column(data, f.name), f.name)
            present = values[~np.isnan(values)]
            if f.transform == "standardize":
                f.mean = float(present.mean()) if present.size else 0.0
                f.std = float(present.std()) if present.size else 1.0
            elif f.transform == "quantile":
                qs = np.linspace(0, 1, f.num_quantiles + 1)
                f.quantiles = np.quantile(present, qs).tolist() if present.size else [0.0, 1.0]
        for f in fitted.encodings:
            values = _flat_strings(_column(data, f.name), f.separator)
            counts = pc.value_counts(values.drop_null())
            table = pa.table({"v": counts.field("values"), "n": counts.field("counts")})
            table = table.filter(pc.greater_equal(table["n"], f.min_count))
            table = table.sort_by([("n", "descending"), ("v", "ascending")]).slice(0, f.max_size)
            f.vocabulary = [str(v) for v in table["v"].to_pylist()]
        return fitted

    # -------------------------------------------------------------------------- encode
    def encode(self, data: pa.Table | pa.RecordBatch, with_labels: bool = True) -> Batch:
        """Raw records → Batch, vectorised over columns (no per-row Python)."""
        n = data.num_rows
        if with_labels and self.labels:
            labels = np.stack([self._label(data, lab) for lab in self.labels], axis=1)
        else:
            labels = np.zeros((n, 0), np.float32)
        blocks = [self._dense_block(data, f) for f in self.dense]
        blocks += [self._encoding_block(data, f) for f in self.encodings]
        dense = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), np.float32)
        sparse = {f.name: self._embedding_ids(data, f) for f in self.embeddings}
        group_ids = timestamps = None
        if self.group_id and self.group_id in data.schema.names:
            group_ids = torch.from_numpy(fids_from_arrow(_flat(_column(data, self.group_id))))
        if self.timestamp and self.timestamp in data.schema.names:
            ts = _column(data, self.timestamp)
            seconds = np.array(pc.fill_null(ts.cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
            if self.timestamp_unit != "s":
                seconds //= SECONDS_PER_UNIT[self.timestamp_unit]
            timestamps = torch.from_numpy(seconds)
        return Batch(
            torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
            sparse,
            group_ids,
            timestamps,
        )

    def dense_spans(self) -> dict[str, slice]:
        """Feature → its columns of `Batch.dense`, in the order `encode` lays them out (dense
        features, then encodings): what code that assembles a Batch by parts writes to."""
        spans, start = {}, 0
        for f in (*self.dense, *self.encodings):
            spans[f.name] = slice(start, start + f.width)
            start += f.width
        return spans

    def shared_inputs(self, features: Collection[str]) -> tuple[list[str], list[int]]:
        """Of the inputs `features` that a request gives once for all its rows (its context):
        (the embedding features among them, the columns of `Batch.dense` they fill). An
        embedding feature with a weights column is shared only if its weights are too."""
        sparse = [
            f.name
            for f in self.embeddings
            if f.name in features and (f.weights is None or f.weights in features)
        ]
        spans = self.dense_spans()
        columns = [c for name, span in spans.items() if name in features
                   for c in range(span.start, span.stop)]
        return sparse, columns

    def share_requests(
        self, batch: Batch, sizes: Sequence[int], features: Collection[str]
    ) -> Batch:
        """`batch` (rows laid out request after request, `sizes` rows each) with the
        `RequestContext` of the `features` each request gave once: a model then computes what
        depends on them once per request. The same batch when nothing would be shared."""
        sparse, columns = self.shared_inputs(features)
        if len(sizes) == batch.size or not (sparse or columns):
            return batch
        return replace(batch, context=RequestContext.of(batch.dense, sizes, sparse, columns))

    def encode_features(
        self, data: pa.Table | pa.RecordBatch, names: set[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, JaggedIds]]:
        """Only the features `names` of `data`, each as `encode` encodes it: (dense feature or
        encoding → float32 [n, width], embedding feature → its ids). For callers that encode
        some features of a row once and reuse them (`serving/item_encoding.py`)."""
        dense = {f.name: self._dense_block(data, f) for f in self.dense if f.name in names}
        dense.update(
            {f.name: self._encoding_block(data, f) for f in self.encodings if f.name in names}
        )
        sparse = {f.name: self._embedding_ids(data, f) for f in self.embeddings if f.name in names}
        return dense, sparse

    def encode_dense(self, data: pa.Table | pa.RecordBatch, name: str) -> np.ndarray:
        """The dense feature `name` of `data`, transformed as `encode` does: float32 [n, width]."""
        for f in self.dense:
            if f.name == name:
                return self._dense_block(data, f)
        raise SchemaError(f"{name!r} is not a dense feature of this schema")

    def _label(self, data: pa.Table | pa.RecordBatch, lab: Label) -> np.ndarray:
        col = _column(data, lab.name)
        if col.null_count:
            first = int(np.flatnonzero(np.asarray(col.is_null().to_numpy(False)))[0])
            raise SchemaError(
                f"label column {lab.name!r} has missing values ({col.null_count} of the "
                f"{len(col)} rows of the batch that holds the first, at its row {first + 1}); "
                "every training row needs a label"
            )
        values, bad = lab.to_binary(col)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise SchemaError(
                f"label column {lab.name!r} holds {col[first].as_py()!r} ({int(bad.sum())} "
                f"values in this batch cannot be labels): {lab.rule_hint()}"
            )
        return values

    def with_labels_mapped(self) -> Schema:
        """This schema for labels that are already 0/1 (a stream decoder applied the rules)."""
        plain = [Label(name=lab.name) for lab in self.labels]
        return self.model_copy(update={"labels": plain})

    def _dense_block(self, data: pa.Table | pa.RecordBatch, f: DenseFeature) -> np.ndarray:
        x = _dense_values(_column(data, f.name), f.name)
        missing = np.isnan(x)
        if f.transform == "log1p":
            x = np.sign(x) * np.log1p(np.abs(x))
        elif f.transform == "standardize":
            if f.mean is None or f.std is None:
                raise SchemaError(f"dense feature {f.name!r} is not fitted: call fit()")
            x = (x - f.mean) / (f.std if f.std > 0 else 1.0)
        elif f.transform == "quantile":
            if f.quantiles is None:
                raise SchemaError(f"dense feature {f.name!r} is not fitted: call fit()")
            q = np.asarray(f.quantiles)
            x = np.interp(x, q, np.linspace(0.0, 1.0, q.size))
        x = np.where(missing, f.fill, x).astype(np.float32)
        if f.missing_indicator:
            return np.stack([x, missing.astype(np.float32)], axis=1)
        return x[:, None]

    def _encoding_block(self, data: pa.Table | pa.RecordBatch, f: EncodingFeature) -> np.ndarray:
        col = _column(data, f.name)
        n = len(col)
        vocab = pa.array(f.vocabulary if f.vocabulary is not None else [], pa.string())
        width = f.width
        out = np.zeros((n, width), np.float32)
        lists = _as_lists(col, f.separator)
        flat = pc.cast(lists.flatten(), pa.string())
        if len(flat) == 0:
            return out
        index = pc.index_in(flat, value_set=vocab)
        index = np.asarray(pc.fill_null(index, width - 1).to_numpy(zero_copy_only=False))
        lengths = np.asarray(lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False))
        rows = np.repeat(np.arange(n), lengths)
        out[rows, index] = 1.0
        return out

    def _embedding_ids(self, data: pa.Table | pa.RecordBatch, f: EmbeddingFeature) -> JaggedIds:
        col = _column(data, f.name)
        if _is_list(col.type) or f.separator is not None:
            lists = _as_lists(col, f.separator)
            lengths = np.asarray(
                lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64
            )
            flat = lists.flatten()
            keep = np.ones(len(flat), bool)
            if flat.null_count:
                keep = ~np.asarray(flat.is_null().to_numpy(zero_copy_only=False))
            values = fids_from_arrow(flat)
            if not keep.all():  # null elements inside a list are dropped, not hashed
                rows = np.repeat(np.arange(len(lengths)), lengths)
                values = values[keep]
                lengths = np.bincount(rows[keep], minlength=len(lengths)).astype(np.int64)
        else:
            values = fids_from_arrow(col)
            lengths = np.ones(len(col), np.int64)
            if col.null_count:
                lengths[np.asarray(col.is_null().to_numpy(zero_copy_only=False))] = 0
                values = values[lengths == 1]
            elif not f.weights and f.max_length is None:  # one id a row: nothing to fill
                return JaggedIds(
                    torch.from_numpy(np.ascontiguousarray(values, np.int64)),
                    torch.arange(len(col) + 1, dtype=torch.int64),
                )
        weights = None
        if f.weights:
            wcol = _column(data, f.weights)
            weights = np.array(
                pc.cast(_as_lists(wcol, None).flatten(), pa.float32()).to_numpy(
                    zero_copy_only=False
                )
            )
            if weights.shape != values.shape:
                raise SchemaError(
                    f"feature {f.name!r}: {weights.size} weights for {values.size} ids"
                )
        if f.missing == "token":
            values, lengths, weights = _fill_missing_token(values, lengths, weights)
        ids = JaggedIds.from_lengths(
            torch.from_numpy(np.ascontiguousarray(values, np.int64)),
            torch.from_numpy(lengths),
            None if weights is None else torch.from_numpy(np.ascontiguousarray(weights)),
        )
        if f.max_length is not None:
            ids = ids.truncate_last(f.max_length)
        return ids


# ------------------------------------------------------------------------- arrow helpers
def _column(data: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    if name not in data.schema.names:
        names = data.schema.names
        raise SchemaError(
            f"column {name!r} is missing (have: {', '.join(names)}){_header_hint(names)}"
        )
    col = data.column(name)
    if isinstance(col, pa.ChunkedArray):  # one chunk (a request's table): no copy
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _header_hint(names: list[str]) -> str:
    """What to do when a file's "column names" are data: a headerless file read as CSV."""
    if len(names) == 1 and "\t" in names[0]:
        return (
            " — the file looks tab-separated: use --format tsv (or data.format: tsv; a Criteo "
            "file: --format criteo)"
        )
    looks_like_data = sum(n == "" or n.lstrip("-").replace(".", "", 1).isdigit() for n in names)
    if names and looks_like_data > len(names) / 2:
        return (
            " — those look like values, not column names: the file has no header row. A "
            "Criteo file? use --format criteo (or data.format: criteo); else add a header row "
            "naming the columns"
        )
    return ""


def _flat(col: pa.Array) -> pa.Array:
    return col.flatten() if _is_list(col.type) else col


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _as_lists(col: pa.Array, separator: str | None) -> pa.Array:
    """Any column → list array: lists stay, strings split on `separator`, scalars wrap."""
    if _is_list(col.type):
        return col
    if separator is not None:
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = pc.cast(col, pa.string())
        return pc.split_pattern(col, separator)
    offsets = np.arange(len(col) + 1, dtype=np.int32)
    if col.null_count:
        lengths = (~np.asarray(col.is_null().to_numpy(zero_copy_only=False))).astype(np.int32)
        offsets[1:] = np.cumsum(lengths)
        col = col.drop_null()
    return pa.ListArray.from_arrays(pa.array(offsets), col)


def _flat_strings(col: pa.Array, separator: str | None) -> pa.Array:
    return pc.cast(_as_lists(col, separator).flatten(), pa.string())


def _dense_values(col: pa.Array, name: str) -> np.ndarray:
    """float64 [n] with NaN for missing; a non-numeric column is a SchemaError."""
    try:
        arr = col.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SchemaError(f"dense feature {name!r} is not numeric: {e}") from None
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _fill_missing_token(
    values: np.ndarray, lengths: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Give every empty row one MISSING_FID (weight 1) so 'missing' has its own embedding."""
    empty = lengths == 0
    if not empty.any():
        return values, lengths, weights
    new_lengths = np.where(empty, 1, lengths)
    ends = np.cumsum(new_lengths)
    out = np.full(int(ends[-1]), MISSING_FID, np.int64)
    keep_positions = np.repeat(ends - new_lengths, lengths) + _ranks_within(lengths)
    out[keep_positions] = values
    new_weights = None
    if weights is not None:
        new_weights = np.ones(out.size, np.float32)
        new_weights[keep_positions] = weights
    return out, new_lengths, new_weights


def _ranks_within(lengths: np.ndarray) -> np.ndarray:
    """[0..len0-1, 0..len1-1, ...] for row lengths."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - starts


def input_kinds(table: pa.Table | pa.RecordBatch, columns: list[str]) -> dict[str, str]:
    """Kinds of the columns a schema reads, as seen in the training data (saved with the model
    so that serving decodes request values exactly as training did: ints stay ids, strings
    are hashed)."""
    return {c: value_kind(table.schema.field(c).type) for c in columns if c in table.schema.names}
