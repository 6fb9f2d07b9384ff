"""The manifests of the on-disk format, typed: one definition that every writer's manifest is
checked against before it is written and every reader's after it is read.

A model directory's `ModelManifest` carries the job config (with the fitted schema), the
tables, the model's input kinds — the input contract every later reader decodes by — and the
sha256 of every file; a delta's `DeltaManifest` carries its version, the model it applies to,
whether it is a full snapshot, its tables and the stream offsets it covers. Every section this
streamrec writes is declared here (metrics, trainer state, online position, retrieval index …)
and readers use the typed objects `parse_manifest` returns, never the raw JSON; a manifest
that drifted from what readers expect is refused at write time, and a damaged one at read
time, with the field named. Sections this version does not know (a newer writer's) are kept
and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streamrec.store.errors import CorruptModelError
from streamrec.table_config import TableConfig

MODEL_FORMAT = "streamrec-model"
DELTA_FORMAT = "streamrec-delta"

InputKind = Literal["int", "float", "string", "list<int>", "list<float>", "list<string>"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TableEntry(_Section):
    file: str
    rows: int = Field(ge=0)
    dim: int = Field(gt=0)
    version: int = Field(ge=0)
    config: TableConfig
    disk_tier: str | None = Field(None, description="a tiered table's disk-tier folder")
    row_precision: Literal["fp32", "int16", "int8"] = Field(
        "fp32", description="how the file holds the weights: fp32, or a serving copy's "
        "int16 / int8 codes with a per-row scale and offset (`streamrec export --rows`)",
    )

    @field_validator("config", mode="before")
    @classmethod
    def _without_legacy_name(cls, value: Any) -> Any:
        """Models written before TableConfig held every setting also stored the table's name."""
        if isinstance(value, dict) and "name" in value:
            return {k: v for k, v in value.items() if k != "name"}
        return value


class TrainerSection(_Section):
    """A checkpoint's trainer state: where it stands, and the dense optimizer's settings."""

    position: dict[str, Any]
    optimizer: dict[str, Any]


class OnlineSection(_Section):
    """An online checkpoint's stream position and counts (`train/online.py`)."""

    next_offset: int = Field(0, ge=0)
    events_consumed: int = Field(0, ge=0)
    events_trained: int = Field(0, ge=0)
    dead_lettered: int = Field(0, ge=0)
    dead_letter_bytes: int = Field(0, ge=0)
    base_model_version: int | None = None
    delta_since_versions: dict[str, int] | None = None  # absent in checkpoints before it
    batches_since_delta: int = Field(0, ge=0)
    source_state: dict[str, Any] | None = None  # a joined source: both streams and the joiner


class RetrievalSection(_Section):
    """A retriever's index: its settings, vector width, item count and removed items."""

    index: dict[str, Any]
    dim: int = Field(gt=0)
    items: int = Field(ge=0)
    tombstones: list[int] = Field(default_factory=list)


class ExportedFrom(_Section):
    path: str
    model_version: int | None = None


class ParentModel(_Section):
    path: str
    model_version: int


class DataFile(_Section):
    path: str
    bytes: int = Field(ge=0)
    sha256: str


class Lineage(_Section):
    """Where a model came from (`train/lineage.py`): enough to say what changed between two
    models, and to refuse to call two runs the same when they are not."""

    parent: ParentModel | None = Field(None, description="the model it was warm-started from")
    data_format: str
    data: list[DataFile] = Field(default_factory=list, description="the files it read")
    config_sha256: str = Field(description="of the config as trained (schema fitted)")
    code_version: str = Field(description="streamrec's version, and git commit when known")


class ModelManifest(_Section):
    format: Literal["streamrec-model"]
    format_version: int = Field(ge=1)
    created: float
    model_version: int
    config: dict[str, Any]
    schema_: dict[str, Any] = Field(alias="schema")
    tables: dict[str, TableEntry]
    input_kinds: dict[str, InputKind] = Field(
        default_factory=dict, description="input column → kind: how every reader reads it"
    )
    last_delta_version: int = Field(0, ge=0, description="deltas up to this one are included")
    files: dict[str, str]
    model_type: Literal["ranking", "retrieval"] = "ranking"
    metrics: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] | None = Field(None, description="the training job's result")
    trainer: TrainerSection | None = Field(None, description="a checkpoint's: what resumes")
    online: OnlineSection | None = None
    retrieval: RetrievalSection | None = None
    dead_lettered: int | None = Field(None, ge=0)
    rank: int | None = Field(None, ge=0, description="a torchrun rank's shard")
    world_size: int | None = Field(None, ge=1)
    trained_on_ranks: int | None = Field(None, ge=1)
    exported_from: ExportedFrom | None = None
    lineage: Lineage | None = None
    file_sizes: dict[str, int] = Field(
        default_factory=dict, description="bytes of each file of a folder (a disk tier's SSTs)"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_kind(cls, value: Any) -> Any:
        """Models saved before the field was named `model_type` call it `kind`."""
        if isinstance(value, dict) and "kind" in value and "model_type" not in value:
            value = {**value, "model_type": value["kind"]}
        return value

    @property
    def is_retrieval(self) -> bool:
        return self.model_type == "retrieval"


class DeltaTableEntry(_Section):
    file: str
    rows: int = Field(ge=0)
    deleted: int = Field(ge=0)
    dtype: str


class DeltaProgress(_Section):
    """What an online trainer says about a delta it writes: where in the stream it is, how much
    it learnt, how fresh the events are, and its health. The writer builds one of these; the
    exporter adds the rest of the `DeltaManifest`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    checkpoint_version: int = Field(0, ge=0, description="the checkpoint the trainer had made")
    offsets: dict[str, int] | None = Field(None, description="the stream offsets it covers")
    events_trained: int | None = Field(None, ge=0)
    consumed_at: list[float] | None = Field(
        None, description="[first, last] wall time its events were read by the trainer"
    )
    health: list[dict[str, Any]] = Field(
        default_factory=list, description="the trainer's active health warnings"
    )


class DeltaManifest(DeltaProgress):
    model_config = ConfigDict(extra="allow", populate_by_name=True)  # a newer writer's keys

    format: Literal["streamrec-delta"]
    format_version: int = Field(ge=1)
    version: int = Field(ge=1)
    base_model_version: int | None = None
    created: float
    precision: Literal["fp32", "fp16", "int8"]
    full: bool = Field(False, description="a full snapshot: replaces the tables' content")
    tables: dict[str, DeltaTableEntry]
    dense: str | None = None
    files: dict[str, str]


_TYPES: dict[str, type[BaseModel]] = {MODEL_FORMAT: ModelManifest, DELTA_FORMAT: DeltaManifest}


def check_manifest(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    """`manifest` if it is a well-formed manifest of its format; CorruptModelError naming the
    first wrong fields otherwise (what writers call before writing)."""
    parse_manifest(manifest, where)
    return manifest


def parse_manifest(manifest: dict[str, Any], where: str) -> ModelManifest | DeltaManifest:
    """The typed manifest of a model or delta directory; CorruptModelError naming the first
    wrong fields of a malformed one."""
    kind = _TYPES.get(manifest.get("format"))  # type: ignore[arg-type]
    if kind is None:
        raise CorruptModelError(f"{where}: unknown format {manifest.get('format')!r}")
    try:
        parsed = kind.model_validate(manifest)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:3]
        )
        raise CorruptModelError(f"{where}: malformed manifest ({problems})") from None
    for sha in parsed.files.values():
        if len(sha) != 64:
            raise CorruptModelError(f"{where}: malformed manifest (a checksum is not sha256)")
    return parsed  # type: ignore[return-value]
