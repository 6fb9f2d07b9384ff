"""The job config: everything a run needs, in one YAML file, loaded into pydantic models.

    schema:  feature declarations (streamrec.schema.Schema)
    tables:  per-table settings (dim, row optimizer, admission, expiry, capacity);
             `default_table` applies to every table the schema names and `tables` does not
    data / model / train: what to read, which model, how to train

Code-driven use builds the same objects directly. Unknown keys are errors (a typo must not be
silently ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamrec.schema import Schema


class ConfigError(ValueError):
    """The config file is missing, not YAML, or does not validate; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TableConfig(_Strict):
    dim: int = Field(16, gt=0)
    optimizer: Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"] = "rowwise_adagrad"
    lr: float = Field(0.05, gt=0)
    eps: float = 1e-8
    initial_accumulator: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    ftrl_l1: float = 0.0
    ftrl_l2: float = 0.0
    ftrl_beta: float = 1.0
    weight_decay: float = 0.0
    init_scale: float = Field(0.01, ge=0, description="rows start uniform in ±init_scale")
    admit_min_count: int | None = Field(None, ge=1)
    admit_probability: float | None = Field(None, gt=0, le=1)
    ttl_seconds: float | None = Field(None, gt=0)
    capacity: int | None = Field(None, gt=0)
    eviction: Literal["lfu", "lru"] = "lfu"
    sketch_width: int = Field(1 << 20, gt=0, description="count-min sketch counters per row")
    seed: int = 0


class DataConfig(_Strict):
    format: str = "csv"
    train: str | None = None
    valid: list[str] = Field(default_factory=list)
    split: Literal["none", "per_user_time"] = "none"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    batch_size: int = Field(1024, gt=0)
    shuffle_rows: int = Field(
        0,
        ge=0,
        description="each epoch, shuffle training rows within consecutive blocks of this many "
        "rows (0: file order); a block at least the size of the data is a full shuffle",
    )
    dead_letter: str | None = None
    strict: bool = False
    history_length: int | None = Field(
        None, ge=1, description="add a `history` column: each user's previous items (MovieLens)"
    )


class ModelConfig(_Strict):
    name: str = "deepfm"
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    epochs: int = Field(1, ge=1)
    seed: int = 0
    dense_optimizer: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    dense_lr: float = Field(1e-3, gt=0)
    dense_weight_decay: float = 0.0
    grad_clip_norm: float | None = None
    warmup_steps: int = 0
    early_stopping_patience: int | None = None
    negative_sampling_rate: float = Field(1.0, gt=0, le=1)
    evict_every_steps: int = Field(100, gt=0)
    exchange_precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="rows and gradients between ranks (fp16 halves the bytes)"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast the dense layers (CPU AVX-512-BF16 / GPU)"
    )
    log_every_steps: int = Field(20, gt=0)
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        description="also checkpoint every N steps (0: only at epoch ends); `--resume`, or a "
        "worker restarted by `torchrun --max-restarts`, continues from the newest checkpoint",
    )
    sparse_staleness: int = Field(
        0,
        ge=0,
        description="torchrun only: let embedding-gradient exchanges lag up to N steps behind "
        "(hybrid mode: sparse asynchronous, dense synchronous); 0 = fully synchronous",
    )


class ServingConfig(_Strict):
    context_features: list[str] = Field(
        default_factory=list,
        description="request-level features (the user's), sent once and broadcast to candidates",
    )
    max_batch_rows: int = Field(4096, ge=1, description="rows per inference batch")
    max_delay_ms: float = Field(4.0, ge=0, description="wait from the oldest queued request")
    max_queue_rows: int = Field(100_000, ge=1, description="beyond this, answer 503")
    max_candidates: int = Field(1000, ge=1)
    max_body_bytes: int = Field(
        2 << 20, ge=1, description="larger request bodies get 413, chunked ones too"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="a connection whose request body takes longer is closed"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection whose request headers take longer is closed"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections closed after")
    cache_bytes: int = Field(32 << 20, ge=0, description="prediction cache budget; 0 = off")
    poll_seconds: float = Field(0.5, gt=0, description="how often to look for deltas / models")
    threads: int = Field(1, ge=1, description="torch / numba threads of the inference worker")


class JoinConfig(_Strict):
    window_seconds: float = Field(300.0, gt=0, description="how long an impression waits")
    allowed_lateness: float = Field(0.0, ge=0)
    tasks: dict[str, str] = Field(
        default_factory=lambda: {"click": "label"}, description="action type → label column"
    )
    max_pending: int = Field(1_000_000, ge=1)


class OnlineConfig(_Strict):
    sync_interval_seconds: float = Field(5.0, gt=0, description="write a delta this often")
    checkpoint_interval_seconds: float = Field(30.0, gt=0, description="full checkpoint")
    delta_precision: Literal["fp32", "fp16", "int8"] = "fp32"
    dense_every: int = Field(10, ge=1, description="dense weights in every Nth delta")
    snapshot_every_deltas: int = Field(
        60,
        ge=0,
        description="every Nth delta is a full snapshot (all rows + dense weights) that heals "
        "a server which skipped a corrupt delta (60 × 5 s = every 5 minutes); 0 = never",
    )
    metrics_window: int = Field(10_000, ge=100, description="examples in windowed metrics")
    max_message_bytes: int = Field(
        1 << 20, ge=1, description="larger stream messages are dead-lettered unread"
    )
    deterministic: bool = Field(
        False,
        description="deltas / checkpoints every N batches instead of every N seconds, "
        "so a restarted run reproduces an uninterrupted one exactly",
    )
    sync_every_batches: int = Field(20, ge=1)
    checkpoint_every_batches: int = Field(100, ge=1)
    init_model: str | None = Field(None, description="start from this model directory")
    join: JoinConfig = Field(default_factory=JoinConfig)


class RetrievalConfig(_Strict):
    index: Literal["flat", "ivf_flat", "ivf_pq", "hnsw", "sq8"] = "hnsw"
    nlist: int = 256
    nprobe: int = 16
    pq_m: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    candidates: int = Field(200, ge=1, description="items retrieved before ranking")


class JobConfig(_Strict):
    name: str = "job"
    schema_: Schema = Field(alias="schema")
    default_table: TableConfig = Field(default_factory=TableConfig)
    tables: dict[str, TableConfig] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def schema(self) -> Schema:  # type: ignore[override]
        return self.schema_

    def table_configs(self) -> dict[str, TableConfig]:
        """Every table the schema uses → its settings (explicit entry or `default_table`)."""
        used = self.schema_.tables()
        unknown = set(self.tables) - set(used)
        if unknown:
            raise ConfigError(f"tables {sorted(unknown)} are configured but no feature uses them")
        return {name: self.tables.get(name, self.default_table) for name in used}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def load_config(path: str | Path) -> JobConfig:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return parse_config(raw, base_dir=p.parent, source=str(p))


def parse_config(
    raw: dict[str, Any], base_dir: Path | None = None, source: str = "config"
) -> JobConfig:
    try:
        cfg = JobConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None
    cfg.table_configs()
    unknown = set(cfg.serving.context_features) - set(cfg.schema_.feature_names)
    if unknown:
        raise ConfigError(
            f"{source}: serving.context_features names unknown features {sorted(unknown)}"
        )
    return cfg
