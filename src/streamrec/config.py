"""The job config: everything a run needs, in one YAML file, loaded into pydantic models.

    schema:  feature declarations (streamrec.schema.Schema)
    tables:  per-table settings (dim, row optimizer, admission, expiry, capacity);
             `default_table` applies to every table the schema names and `tables` does not
    data / model / train: what to read, which model, how to train

Code-driven use builds the same objects directly. Unknown keys are errors (a typo must not be
silently ignored).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streamrec.schema import Schema
from streamrec.table_config import TableConfig


class ConfigError(ValueError):
    """The config file is missing, not YAML, or does not validate; the message says where."""


class _Strict(BaseModel):
    # Every change is checked, by file, `--set`, a flag or code (`cfg.train.epochs = 0` raises)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    format: str = Field(
        "csv",
        description=r"criteo \| csv \| tsv \| parquet \| libsvm \| libfm \| libffm \| ml-100k "
        r"\| ml-latest-small (libsvm/libfm/libffm: see data.fields)",
    )
    train: str | None = Field(None, description="training file (or folder for MovieLens)")
    valid: list[str] = Field(default_factory=list, description="validation files")
    split: Literal["none", "per_user_time"] = Field(
        "none",
        description="per_user_time: each user's last `test_fraction` of events (by time) validate",
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1,
        description="share of each user's events held out by per_user_time",
    )
    batch_size: int = Field(1024, gt=0, description="rows per training step")
    shuffle_rows: int = Field(
        0,
        ge=0,
        description="each epoch, shuffle training rows within consecutive blocks of this many "
        "rows (0: file order); a block at least the size of the data is a full shuffle",
    )
    fields: dict[str, list[int]] | None = Field(
        None,
        description="libsvm / libfm: field name → [first, end) of its feature indices (default: "
        "one field `features`); libffm: → [first, end) of field numbers (default: f<number>)",
    )

    @field_validator("fields")
    @classmethod
    def _ranges(cls, fields: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
        """Each field is [first, end) with first < end: a malformed range is a config error,
        not a reader crash."""
        for name, bounds in (fields or {}).items():
            if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
                raise ValueError(f"field {name!r}: give [first, end) with 0 <= first < end")
        return fields

    def advice(self) -> list[str]:
        """Settings that are valid but probably not what the user meant, one line each (the
        train command prints them as notes before the first step)."""
        notes = []
        if self.format in ("libsvm", "libfm") and self.fields is None:
            notes.append(
                f"{self.format}: every feature index is one field `features` sharing one "
                "table; set data.fields ({name: [first, end)} of feature indices) for "
                "per-field tables, which FM / DeepFM / DCN-v2 need to learn field interactions"
            )
        if not self.valid and self.split == "none":
            notes.append(
                "no validation data (data.valid, or data.split: per_user_time): the run "
                "reports no metrics and keeps the last epoch, not the best"
            )
        return notes

    dead_letter: str | None = Field(
        None,
        description="where malformed rows go (JSON lines); default RUN/dead_letter.jsonl",
    )
    strict: bool = Field(False, description="stop at the first malformed row instead")
    history_length: int | None = Field(
        None, ge=1, description="add a `history` column: each user's previous items (MovieLens)"
    )


class ModelConfig(_Strict):
    name: str = Field(
        "deepfm",
        description="a registered model: lr, gbdt_lr (boosted trees' leaves in an LR; needs "
        "streamrec[trees]), fm, deepfm, wide_deep, dcnv2, dlrm, din, mmoe, ppnet, cold (a gated "
        "pre-ranker), two_tower",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's constructor arguments",
    )


class HealthRulesConfig(_Strict):
    """Thresholds of the training health rules (`train/health.py`, docs/operations.md)."""

    check_every_steps: int = Field(
        50, gt=0,
        description="dead ReLUs, the dense gradient norm, embedding norms, admission and "
        "calibration are checked every N steps (the loss and the global gradient norm every "
        "step); a warning clears after N quiet steps",
    )
    loss_window_steps: int = Field(
        1000, gt=1,
        description="loss not decreasing: the mean loss of the last N steps is not below that "
        "of the N before (by `loss_min_decrease`, relative); judged every N steps from 2N on",
    )
    loss_min_decrease: float = Field(
        0.0, ge=0, lt=1, description="the relative decrease a window must show over the one before"
    )
    exploding_grad_norm: float = Field(
        1e3, gt=0,
        description="exploding gradient: the global L2 norm of a step's gradients (dense and "
        "embedding rows) above this (judged every step)",
    )
    vanishing_grad_norm: float = Field(
        1e-7, ge=0,
        description="vanishing gradient: the dense gradients' L2 norm below this",
    )
    dead_relu_fraction: float = Field(
        0.9, gt=0, le=1,
        description="dead ReLU: this share of a layer's units output 0 for every example of a "
        "checked batch",
    )
    overfit_gap: float = Field(
        0.15, gt=0,
        description="overfit: validation loss above the epoch's training loss by this share "
        "of it, and the gap wider than at the previous evaluation `overfit_evaluations` times "
        "running",
    )
    overfit_evaluations: int = Field(2, ge=1, description="see `overfit_gap`")
    embedding_norm_growth: float = Field(
        10.0, gt=1,
        description="embedding norm growth: a table's mean row L2 norm grew this many times "
        "since the run's first check",
    )
    calibration_drift: float = Field(
        0.3, gt=0,
        description="online runs: a task's windowed calibration (mean prediction / mean label) "
        "off 1 by more than this",
    )
    calibration_min_positives: int = Field(
        100, ge=1, description="…judged only on windows holding this many positive labels"
    )
    calibration_warmup_steps: int = Field(
        100, ge=0,
        description="…and only after this many steps (a fresh model starts uncalibrated)",
    )
    admission_starving: float = Field(
        0.99, gt=0, le=1,
        description="admission starving: this share of the new ids a table saw since the last "
        "check was refused a row (judged over at least `admission_min_ids` new ids)",
    )
    admission_min_ids: int = Field(1000, ge=1, description="see `admission_starving`")
    mass_expiry_share: float = Field(
        0.9, gt=0, le=1,
        description="mass expiry: one expiry pass deleted this share of a table's rows …",
    )
    mass_expiry_growth: float = Field(
        1.5, ge=1,
        description="…and more than this many times the largest share an earlier pass of the "
        "same table deleted",
    )


class TrainConfig(_Strict):
    epochs: int = Field(1, ge=1, description="passes over the training data")
    seed: int = Field(0, description="seed for initialisation, shuffling and sampling")
    dense_optimizer: Literal["adam", "adamw", "sgd", "adagrad"] = Field(
        "adam",
        description="optimizer of the dense parameters",
    )
    dense_lr: float = Field(1e-3, gt=0, description="its learning rate")
    dense_weight_decay: float = Field(0.0, description="its weight decay")
    grad_clip_norm: float | None = Field(
        None,
        description="clip the global gradient norm (dense parameters and embedding rows together) "
        "to this",
    )
    grad_accumulation_steps: int = Field(
        1, ge=1,
        description="sum the gradients of this many batches (dense and embedding rows) before "
        "one optimizer step",
    )
    skip_nonfinite_steps: bool = Field(
        True,
        description="skip (and count) an optimizer step whose gradients hold a NaN or inf, so it "
        "never reaches a table",
    )
    warmup_steps: int = Field(0, description="linear learning-rate warm-up")
    early_stopping_metric: Literal["auc", "logloss", "ne"] = Field(
        "auc",
        description="the validation metric of the first task that picks the best epoch (the "
        "one the model directory holds) and early stopping",
    )
    early_stopping_patience: int | None = Field(
        None,
        description="stop after this many epochs without a better `early_stopping_metric`",
    )
    negative_sampling_rate: float = Field(
        1.0, gt=0, le=1,
        description="keep this share of negatives (predictions re-calibrated)",
    )
    evict_every_steps: int = Field(100, gt=0, description="run TTL / capacity eviction this often")
    exchange_precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="rows and gradients between ranks (fp16 halves the bytes)"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast the dense layers (CPU AVX-512-BF16 / GPU)"
    )
    log_every_steps: int = Field(20, gt=0, description="metrics.csv row every N steps")
    mlflow: str | None = Field(
        None,
        description="also track the run in MLflow: a tracking URI (http://…, sqlite:///…, "
        "file:…) or `local` (a store in RUN/mlruns); needs the mlflow extra",
    )
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
    distill_from: str | None = Field(
        None,
        description="a trained ranking model (run or model directory) to distil from: the "
        "loss targets become distill_weight × its predicted probabilities + (1 − "
        "distill_weight) × the labels (a pre-ranker learns the ranker's order); batch `train` "
        "only",
    )
    distill_weight: float = Field(
        1.0, ge=0, le=1, description="the teacher's share of the targets (see distill_from)"
    )
    health: Literal["warn", "stop", "off"] = Field(
        "warn",
        description="training health rules (`health_rules`): warn (log, status.json, "
        "TensorBoard, the status page), stop (also end the run with a checkpoint and exit code "
        "3), off",
    )
    health_rules: HealthRulesConfig = Field(
        default_factory=HealthRulesConfig, description="the rules' thresholds"
    )

    @model_validator(mode="after")
    def _checkpoints_between_steps(self) -> TrainConfig:
        every, accumulate = self.checkpoint_every_steps, self.grad_accumulation_steps
        if every % accumulate:
            raise ValueError(
                f"checkpoint_every_steps ({every}) must be a multiple of "
                f"grad_accumulation_steps ({accumulate}): a checkpoint cannot hold gradients "
                "waiting for a step"
            )
        if self.distill_from and self.negative_sampling_rate < 1:
            raise ValueError(
                "distill_from with negative_sampling_rate < 1: down-sampling is decided by the "
                "hard labels and re-calibrates for them; use one or the other"
            )
        return self


class ComputeLevelConfig(_Strict):
    """One way to answer POST /v1/recommend, from most to least work (DCAF's actions)."""

    k1: int = Field(..., ge=1, description="items retrieved (and pre-ranked)")
    k2: int = Field(
        ..., ge=0,
        description="of those, items the ranker scores; 0 = no ranking (the pre-ranker's "
        "order, or retrieval's without a pre-ranker)",
    )
    gain: float = Field(
        ..., gt=0, le=1,
        description="expected quality next to the first level (e.g. its recall@k ratio on "
        "logged traffic: benchmarks/overload.py measures it)",
    )
    cost: float = Field(..., gt=0, description="compute per request next to the first level")
    preranked: bool = Field(True, description="run the pre-ranker (when there is one)")

    @model_validator(mode="after")
    def _ranks_what_it_retrieves(self) -> ComputeLevelConfig:
        if self.k2 > self.k1:
            raise ValueError(f"k2 ({self.k2}) cannot exceed the k1 ({self.k1}) items retrieved")
        return self


def _default_levels() -> list[ComputeLevelConfig]:
    """Measured on MovieLens-100k (benchmarks/overload.py): the share of the first level's top
    50 each level also returns, and the server's CPU time per request at that level next to
    the first level's."""
    return [
        ComputeLevelConfig(k1=1000, k2=100, gain=1.0, cost=1.0),
        ComputeLevelConfig(k1=500, k2=50, gain=0.55, cost=0.74),
        ComputeLevelConfig(k1=300, k2=0, gain=0.41, cost=0.37),
        ComputeLevelConfig(k1=100, k2=0, gain=0.09, cost=0.21, preranked=False),
    ]


class ComputeAllocationConfig(_Strict):
    """DCAF (`serving/compute_allocation.py`): per request, the level maximising value × gain
    − λ × cost; λ the smallest price that fits recent arrivals into the server's capacity,
    which a controller corrects from latency — so /v1/recommend stays under the SLO as load
    rises, and work shrinks before any request is shed."""

    enabled: bool = Field(False, description="allocate compute per request (serve --slo-ms)")
    slo_ms: float = Field(50.0, gt=0, description="p99 latency target of /v1/recommend")
    capacity_qps: float = Field(
        50.0, gt=0,
        description="requests/s the server answers within the SLO at the first level (e.g. "
        "benchmarks/overload.py's ladder); the controller corrects it from latency",
    )
    setpoint: float = Field(
        0.8, gt=0, le=1,
        description="the controller steers recent p99 latency (plus event-loop lag) to this "
        "fraction of the SLO",
    )
    levels: list[ComputeLevelConfig] = Field(
        default_factory=_default_levels, min_length=1,
        description="from the most work to the least",
    )
    ki: float = Field(
        0.5, gt=0,
        description="capacity correction: log-capacity per second per unit of relative "
        "latency error",
    )
    release: float = Field(
        0.2, gt=0, le=1,
        description="under the setpoint, capacity grows back at this fraction of the rate it "
        "shrinks at",
    )
    value_half_life_s: float = Field(
        3600.0, gt=0, description="a user's activity (their request value) halves this fast"
    )

    @model_validator(mode="after")
    def _first_level_is_the_fullest(self) -> ComputeAllocationConfig:
        """Costs and gains are read next to the first level, and "every request gets the first
        level" is what a budget of its cost means: it must be the most expensive one."""
        costs = [lv.cost for lv in self.levels]
        if max(costs) > costs[0]:
            raise ValueError(
                f"levels go from the most work to the least: the first costs {costs[0]}, "
                f"a later one {max(costs)}"
            )
        names = [(lv.k1, lv.k2, lv.preranked) for lv in self.levels]
        if len(set(names)) != len(names):
            raise ValueError("two levels have the same k1, k2 and preranked")
        return self


class FeedbackLoopConfig(_Strict):
    impressions: str | None = Field(
        None,
        description="stream (folder, kafka://…, redis://…) the server logs every answered "
        "/v1/recommend to, with the features it used (`serve --log-impressions`)",
    )
    actions: str | None = Field(
        None,
        description="stream POST /v1/feedback appends users' actions to (`serve --actions`)",
    )
    sample_rate: float = Field(
        1.0, gt=0, le=1, description="share of requests whose impressions are logged"
    )
    max_queue: int = Field(
        10_000, ge=1,
        description="records waiting to be written, per stream: beyond, an impression is "
        "dropped and counted, an action answered 503",
    )
    log_rank: bool = Field(False, description="log /v1/rank answers too (with an item_id)")


class ServingConfig(_Strict):
    context_features: list[str] = Field(
        default_factory=list,
        description="request-level features (the user's), sent once and broadcast to candidates",
    )
    max_batch_rows: int = Field(4096, ge=1, description="rows per inference batch")
    max_delay_ms: float = Field(4.0, ge=0, description="wait from the oldest queued request")
    max_queue_rows: int = Field(100_000, ge=1, description="beyond this, answer 503")
    max_candidates: int = Field(1000, ge=1, description="more candidates in one request get 413")
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
    explore_share: float = Field(
        0.0, ge=0, le=1,
        description="share of /v1/recommend's slots (the last ones) filled by Thompson sampling "
        "on the ranker's uncertainty, for models that estimate one (lr, gbdt_lr); 0 = off",
    )
    row_precision: Literal["fp32", "int16", "int8"] = Field(
        "fp32",
        description="how the server holds its ranking models' embedding rows (ranker, "
        "variants, pre-ranker): int8 / int16 re-encode each table where it saves bytes as "
        "codes with a per-row scale and offset, at load and at every reload, de-quantised "
        "only as rows are read (int8: dim + 8 bytes a row, not 4·dim; `streamrec export "
        "--rows` writes such a copy ahead of time)",
    )
    compute_allocation: ComputeAllocationConfig = Field(
        default_factory=ComputeAllocationConfig,
        description="DCAF: /v1/recommend's work per request by value, under a latency SLO",
    )
    feedback: FeedbackLoopConfig = Field(
        default_factory=FeedbackLoopConfig,
        description="the impression log and the action stream (docs/operations.md, "
        "\"The feedback loop\"); `serve` flags override each key",
    )


class JoinConfig(_Strict):
    window_seconds: float = Field(300.0, gt=0, description="how long an impression waits")
    allowed_lateness: float = Field(
        0.0, ge=0,
        description="seconds an action may arrive after its window",
    )
    tasks: dict[str, str] = Field(
        default_factory=lambda: {"click": "label"}, description="action type → label column"
    )
    max_pending: int = Field(
        1_000_000, ge=1,
        description="impressions held at most; the oldest are emitted first",
    )


class OnlineConfig(_Strict):
    sync_interval_seconds: float = Field(5.0, gt=0, description="write a delta this often")
    checkpoint_interval_seconds: float = Field(30.0, gt=0, description="full checkpoint")
    delta_precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="row values in deltas (int8: 4× smaller, per-row scale)",
    )
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
    sync_every_batches: int = Field(
        20, ge=1,
        description="deterministic mode: a delta every N batches",
    )
    checkpoint_every_batches: int = Field(
        100, ge=1,
        description="deterministic mode: a checkpoint every N batches",
    )
    init_model: str | None = Field(None, description="start from this model directory")
    join: JoinConfig = Field(
        default_factory=JoinConfig,
        description="joining impressions with actions (`--actions`)",
    )
    source: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="client settings for kafka:// and redis:// streams (`--source`, "
        "`--actions`, `stream produce --to`): librdkafka names for Kafka (e.g. "
        "security.protocol, sasl.mechanism, sasl.username, sasl.password), redis-py Redis() "
        "keywords for Redis (e.g. password, username)",
    )
    on_gap: Literal["fail", "dead_letter"] = Field(
        "fail",
        description="messages the broker deleted before they were read (Kafka retention): "
        "fail — stop with the partition and offsets (exit 2); dead_letter — record each gap "
        "with its offsets and count in dead_letter.jsonl and go on",
    )
    service_timeout_seconds: float = Field(
        30.0, gt=0,
        description="a stream service (Kafka, Redis) that does not answer for this long ends "
        "the run (exit 4, a checkpoint saved); shorter outages are waited out (status.json "
        "shows source_unavailable)",
    )
    stall_seconds: float = Field(
        60.0, gt=0,
        description="report the source as stalled (log, status.json) when nothing was read "
        "for this long while new messages arrived",
    )


class RetrievalConfig(_Strict):
    index: Literal["flat", "ivf_flat", "ivf_pq", "hnsw", "sq8"] = Field(
        "hnsw",
        description="faiss index type",
    )
    nlist: int = Field(256, description="IVF lists")
    nprobe: int = Field(16, description="IVF lists searched")
    pq_m: int = Field(16, description="PQ sub-quantizers")
    hnsw_m: int = Field(32, description="HNSW links per node")
    ef_search: int = Field(
        128,
        description="HNSW search breadth (a search that would cost more than scanning every "
        "vector scans them exactly instead)",
    )
    candidates: int = Field(200, ge=1, description="items retrieved before ranking")


class JobConfig(_Strict):
    name: str = Field("job", description="the job's name (run folders, logs)")
    schema_: Schema = Field(alias="schema", description="the model's inputs and labels")
    default_table: TableConfig = Field(
        default_factory=TableConfig,
        description="settings of every table not in `tables`",
    )
    tables: dict[str, TableConfig] = Field(
        default_factory=dict,
        description="per-table settings, by table name",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="what to read")
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="which model, and its parameters",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="how to train")
    serving: ServingConfig = Field(
        default_factory=ServingConfig,
        description="how `streamrec serve` batches and bounds requests",
    )
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig,
        description="the two-tower retriever's index",
    )
    online: OnlineConfig = Field(
        default_factory=OnlineConfig,
        description="online training from a stream",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

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


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """The config file at `path`, with `overrides` (`key.path=value`, as `--set` takes them)
    set before it is validated — an override is checked exactly like the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    source = str(p) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return parse_config(with_overrides(raw, overrides), base_dir=p.parent, source=source)


PATH_KEYS = ("data.train", "data.valid", "data.dead_letter", "online.init_model")


def with_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw config with each `key.path=value` set; the value is read as YAML
    (`3`, `0.5`, `true`, `[a, b]`, `{dim: 8}`, text). A relative path given for a file key is
    relative to the working directory, as on any command line."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: write it as key.path=value (e.g. train.epochs=3)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({e})") from None
        if key in PATH_KEYS and value is not None:
            absolute = lambda v: os.path.abspath(v) if isinstance(v, str) else v  # noqa: E731
            value = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {item}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _resolve_paths(cfg: JobConfig, base_dir: Path) -> None:
    """Relative file paths in a config file are relative to the file's folder — not to where
    the command happens to run — so a config works from any directory."""

    def resolve(path: str | None) -> str | None:
        if path is None or Path(path).is_absolute():
            return path
        return os.path.normpath(base_dir / path)

    cfg.data.train = resolve(cfg.data.train)
    cfg.data.valid = [resolve(p) for p in cfg.data.valid]
    cfg.data.dead_letter = resolve(cfg.data.dead_letter)
    cfg.online.init_model = resolve(cfg.online.init_model)


def parse_config(
    raw: dict[str, Any], base_dir: Path | None = None, source: str = "config"
) -> JobConfig:
    try:
        cfg = JobConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None
    if base_dir is not None:
        _resolve_paths(cfg, Path(base_dir))
    cfg.table_configs()
    unknown = set(cfg.serving.context_features) - set(cfg.schema_.feature_names)
    if unknown:
        raise ConfigError(
            f"{source}: serving.context_features names unknown features {sorted(unknown)}"
        )
    return cfg
