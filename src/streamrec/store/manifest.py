"""The manifests of the on-disk format, typed: one definition that every writer's manifest is
checked against before it is written and every reader's after it is read.

A model directory's `ModelManifest` carries the job config (with the fitted schema), the
tables, the model's input kinds — the input contract every later reader decodes by — and the
sha256 of every file; a delta's `DeltaManifest` carries its version, the model it applies to,
whether it is a full snapshot, its tables and the stream offsets it covers. Writers may add
sections of their own (metrics, trainer state, retrieval settings): they are kept, but the
fields below must be present and well-typed, so a manifest that drifted from what readers
expect is refused at write time, and a damaged one at read time, with the field named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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

    @field_validator("config", mode="before")
    @classmethod
    def _without_legacy_name(cls, value: Any) -> Any:
        """Models written before TableConfig held every setting also stored the table's name."""
        if isinstance(value, dict) and "name" in value:
            return {k: v for k, v in value.items() if k != "name"}
        return value


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


class DeltaTableEntry(_Section):
    file: str
    rows: int = Field(ge=0)
    deleted: int = Field(ge=0)
    dtype: str


class DeltaManifest(_Section):
    format: Literal["streamrec-delta"]
    format_version: int = Field(ge=1)
    version: int = Field(ge=1)
    base_model_version: int | None = None
    created: float
    precision: Literal["fp32", "fp16", "int8"]
    full: bool = Field(False, description="a full snapshot: replaces the tables' content")
    checkpoint_version: int = Field(0, ge=0, description="the checkpoint the trainer had made")
    tables: dict[str, DeltaTableEntry]
    dense: str | None = None
    files: dict[str, str]


_TYPES: dict[str, type[BaseModel]] = {MODEL_FORMAT: ModelManifest, DELTA_FORMAT: DeltaManifest}


def check_manifest(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    """`manifest` if it is a well-formed manifest of its format; CorruptModelError naming the
    first wrong fields otherwise."""
    kind = _TYPES.get(manifest.get("format"))  # type: ignore[arg-type]
    if kind is None:
        raise CorruptModelError(f"{where}: unknown format {manifest.get('format')!r}")
    try:
        kind.model_validate(manifest)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:3]
        )
        raise CorruptModelError(f"{where}: malformed manifest ({problems})") from None
    for sha in manifest["files"].values():
        if not isinstance(sha, str) or len(sha) != 64:
            raise CorruptModelError(f"{where}: malformed manifest (a checksum is not sha256)")
    return manifest
