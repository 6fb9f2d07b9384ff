"""TableConfig: every setting of one embedding table, in one typed object.

The job config's `tables:` / `default_table:` entries are TableConfigs; `DynamicTable` is built
from one (and keeps it as `table.settings`), its `RowOptimizer` reads its hyper-parameters from
it, and the model manifest stores it beside each table's file. A new knob is one field here.
Torch-free, so reading a config costs no torch import.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TableConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
