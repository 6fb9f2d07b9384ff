"""TableConfig: every setting of one embedding table, in one typed object.

The job config's `tables:` / `default_table:` entries are TableConfigs; `DynamicTable` is built
from one (and keeps it as `table.settings`), its `RowOptimizer` reads its hyper-parameters from
it, and the model manifest stores it beside each table's file. A new knob is one field here.
Torch-free, so reading a config costs no torch import.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_bytes(value: int | str) -> int:
    """4294967296, "4GiB", "512 MiB", "1.5GB" → bytes."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    number = text.rstrip("KMGTiB ").strip()
    unit = text[len(number):].strip()
    if unit not in _UNITS:
        units = list(_UNITS)[2:]
        raise ValueError(f"{value!r}: unknown unit {unit!r}; use bytes or one of {units}")
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(f"{value!r} is not a size like 4GiB or 512MiB") from None


class StorageConfig(BaseModel):
    """Where a table keeps the rows its memory budget has no room for (`TieredTable`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    memory_budget: int = Field(
        description="bytes of DRAM this table's rows may use (weights, optimizer state, "
        "metadata, hash map): an int or a size like 4GiB, 512MiB; rows beyond it live on disk",
    )
    path: str = Field(
        description="directory of the table's disk tier (one RocksDB store per table under "
        "it); a trainer and a server never share one",
    )

    prefetch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="read the next batch's disk rows on a background thread while a step "
        "computes; auto: on with 4 or more CPU cores (on 2 cores the thread slows the step "
        "more than the reads it hides: benchmarks/RESULTS.md)",
    )

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        size = parse_bytes(value)
        if size < 1 << 16:
            raise ValueError(f"memory_budget {value!r} is under 64 KiB; give at least 64KiB")
        return size


class TableConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dim: int = Field(16, gt=0, description="embedding width")
    optimizer: Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"] = Field(
        "rowwise_adagrad",
        description="the row optimizer, applied in place to the rows a batch touched",
    )
    lr: float = Field(0.05, gt=0, description="row learning rate")
    eps: float = Field(1e-8, description="optimizer epsilon")
    initial_accumulator: float = Field(0.0, description="Adagrad's starting accumulator")
    beta1: float = Field(0.9, description="Adam's first-moment decay")
    beta2: float = Field(0.999, description="Adam's second-moment decay")
    ftrl_l1: float = Field(
        0.0, description="FTRL L1 strength (sparsifies rows); FTRL's lr, β, λ1 and λ2 are per "
        "example, as in McMahan et al. 2013, at any batch size",
    )
    ftrl_l2: float = Field(0.0, description="FTRL L2 strength")
    ftrl_beta: float = Field(1.0, description="FTRL β (the per-coordinate rate is lr / (β + √n))")
    weight_decay: float = Field(0.0, description="decoupled weight decay on touched rows")
    init_scale: float = Field(0.01, ge=0, description="rows start uniform in ±init_scale")
    admit_min_count: int | None = Field(
        None, ge=1,
        description="an id gets a row once seen this often (count-min sketch); until then it "
        "reads zeros",
    )
    admit_probability: float | None = Field(
        None, gt=0, le=1,
        description="admit a new id with this probability instead",
    )
    ttl_seconds: float | None = Field(
        None, gt=0,
        description="rows unseen this long (event time) are expired",
    )
    capacity: int | None = Field(
        None, gt=0,
        description="row cap; beyond it rows are evicted by `eviction`",
    )
    eviction: Literal["lfu", "lru"] = Field("lfu", description="which rows go when over capacity")
    rare_dim: int | None = Field(
        None, gt=0,
        description="frequency-adaptive width: an id seen fewer than `promote_after` times has "
        "only its first rare_dim values stored (the rest read 0); once seen that often it "
        "gets the other dim − rare_dim (a second table, `NAME@frequent`). None: every row "
        "has `dim` (embedding/adaptive_dim.py)",
    )
    promote_after: int = Field(
        10, ge=1,
        description="with rare_dim: occurrences (since the id got its row) after which it "
        "gets its full width",
    )
    sketch_width: int = Field(1 << 20, gt=0, description="count-min sketch counters per row")
    seed: int = Field(0, description="row initialisation seed")
    chunk_rows: int = Field(
        1 << 16, gt=0,
        description="storage layout: rows per allocation chunk, a power of two (growth never "
        "copies old rows)",
    )
    shard_bits: int = Field(
        8, ge=0, le=16,
        description="storage layout: the id hash map is split into 2^shard_bits shards",
    )

    storage: StorageConfig | None = Field(
        None,
        description="keep the table within a DRAM budget, with the other rows on disk: "
        "{memory_budget: 4GiB, path: DIR} (see README, 'Tables larger than memory')",
    )

    @field_validator("chunk_rows")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("chunk_rows must be a power of two")
        return value

    @model_validator(mode="after")
    def _one_admission_rule(self) -> TableConfig:
        if self.admit_min_count is not None and self.admit_probability is not None:
            raise ValueError("choose admit_min_count or admit_probability, not both")
        if self.rare_dim is not None and self.rare_dim >= self.dim:
            raise ValueError(
                f"rare_dim ({self.rare_dim}) must be below dim ({self.dim}): it is the width "
                "of rarely seen ids' rows"
            )
        if self.storage is not None and self.capacity is not None:
            raise ValueError(
                "capacity and storage both bound a table: with storage, rows beyond the memory "
                "budget move to disk instead of being dropped — remove capacity (use "
                "ttl_seconds to drop stale ids)"
            )
        return self

    def group_key(self) -> tuple[Any, ...]:
        """Tables with equal keys can share single kernels (`embedding/grouped.py`)."""
        return (self.dim, self.optimizer, self.shard_bits, self.chunk_rows)

    def hyperparameters(self) -> list[float]:
        """The row-optimizer kernel's per-table parameter row, in the kernel's order."""
        return [
            self.lr,
            self.eps,
            self.beta1,
            self.beta2,
            self.ftrl_l1,
            self.ftrl_l2,
            self.ftrl_beta,
            self.weight_decay,
        ]
