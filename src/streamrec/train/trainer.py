"""Trainer: epochs over a data source, validation each epoch, early stopping, checkpoints.

The one training loop of every model — rankers, the COLD pre-ranker and the two-tower retriever;
offline epochs, the online stream and torchrun ranks all step through it. A model supplies its
loss (`model.objective`: BCE averaged over tasks for rankers, log-Q-corrected in-batch softmax
for the two-tower); the Trainer supplies everything else.

One step: (optionally down-sample negatives) → forward → the model's loss →
backward, which leaves each table's row gradients beside it (no row changes yet) → one
gradient norm clipped over dense parameters and embedding rows, a step with a non-finite
gradient skipped → the row optimizers apply the batch's unique rows and the dense optimizer
(with linear warm-up) steps (`embedding/sparse_optimizer.py`) →
every `evict_every_steps` steps, tables expire / evict rows by event time. Health rules
(`train/health.py`) watch the loss every step and gradients, activations and tables every
`train.health_rules.check_every_steps`.

Runs are deterministic under `train.seed`: data order, dropout, sampling and table updates are
all seeded, so two runs — or a run and its resumption from a checkpoint — give the same losses.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from streamrec.batch import Batch
from streamrec.config import JobConfig, TrainConfig
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.sparse_optimizer import SparseOptimizer, clip_grad_norm_
from streamrec.models.objective import Objective
from streamrec.models.with_tables import WithTables
from streamrec.store.atomic import write_atomic
from streamrec.train.checkpoint import save_checkpoint
from streamrec.train.event_clock import EventClock
from streamrec.train.health import HealthRules, HealthStop, HealthWarning
from streamrec.train.metrics import MetricAccumulator, auc, json_ready
from streamrec.train.mlflow_run import MlflowRun
from streamrec.train.run_dir import BEST, RunDir
from streamrec.train.run_metrics import RunMetrics
from streamrec.train.sampling import downsample_negatives


def build_dense_optimizer(model: WithTables, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`train.dense_optimizer` over the model's `dense_param_groups`; each group remembers its
    base rate as "base_lr" (what warm-up scales)."""
    groups = [g for g in model.dense_param_groups(cfg.dense_lr) if g["params"]]
    if not groups:  # a model with no dense parameters still gets a (no-op) optimizer
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": cfg.dense_lr}]
    for group in groups:
        group["base_lr"] = group["lr"]
    kinds = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
    }
    make = kinds[cfg.dense_optimizer]
    try:
        # One fused kernel over every parameter instead of a few ops per tensor: the DLRM
        # step's Adagrad 5 → 1.3 ms (the same math; results within float rounding, ~1e-7).
        return make(groups, lr=cfg.dense_lr, weight_decay=cfg.dense_weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype without a fused kernel
        return make(groups, lr=cfg.dense_lr, weight_decay=cfg.dense_weight_decay)


@dataclass
class TrainResult:
    metrics: dict[str, dict[str, float]]
    samples_per_s: float
    epochs: int
    best_epoch: int
    steps: int
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int | None = None  # the checkpoint's global step, when resumed
    skipped_steps: int = 0  # optimizer steps skipped for a NaN or inf gradient

    def to_json(self) -> dict:
        return {
            "metrics": self.metrics,
            "samples_per_s": self.samples_per_s,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "steps": self.steps,
            "resumed_from_step": self.resumed_from_step,
            "skipped_steps": self.skipped_steps,
        }


class Trainer:
    def __init__(
        self,
        model: WithTables,
        config: JobConfig,
        run_dir: str | Path | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.config = config
        self.train_config = config.train
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.optimizer = optimizer or build_dense_optimizer(model, self.train_config)
        self.progress = progress
        self.epoch_rows: int | None = None  # rows of a whole epoch, once one has been read
        self.tasks = config.schema.task_names or ["label"]
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.samples_trained = 0
        self.train_seconds = 0.0
        # Expiry and last-seen stamps read this watermark, never one batch's largest time.
        self.clock = EventClock(config.schema.max_event_skew_seconds)
        self.losses: list[float] = []  # every step's loss, for tests and reports
        self.forward_module: torch.nn.Module = model  # e.g. a DistributedDataParallel wrapper
        self.extra_manifest: dict = {}  # saved with every checkpoint (e.g. input kinds)
        self.resumed_from_step: int | None = None
        self.sparse = SparseOptimizer(model)  # the embedding half of every optimizer step
        self.optimizer_steps = 0  # steps taken (applied or skipped); batches / accumulation
        self.skipped_steps = 0  # steps whose gradients held a NaN or inf
        self.empty_steps = 0  # steps with no example to learn from (not taken)
        self.rows_evicted = 0  # by TTL / capacity, this process
        self.last_grad_norm: float | None = None  # when clipping or the NaN check measures it
        self.run_metrics: RunMetrics | None = None  # made at the first metrics row
        self.mlflow: MlflowRun | None = None  # where metrics go too, when the job tracks there
        self.best_epoch = 0  # the best validation epoch so far (1-based; 0: none yet)
        self.best_score: float | None = None
        self._micro = 0  # batches whose gradients wait for the next step
        self._loss_terms = 0  # Σ loss terms over those batches (see step_examples)
        self._samples_at_start = 0  # samples_trained when this process's fit() began
        cfg = self.train_config
        self.health = HealthRules(cfg.health_rules, cfg.health) if cfg.health != "off" else None
        self.health_stops: list[HealthWarning] = []  # fired under `train.health: stop`
        # Called with the warnings that started firing (an online run reports them its way);
        # by default they go to RUN/status.json and TensorBoard.
        self.on_health: Callable[[list[HealthWarning]], None] | None = None
        self._check_gradients = False
        self.last_objective: Objective | None = None  # the last step's (scores for a running AUC)
        self.model.use_negative_sampling(self.train_config.negative_sampling_rate)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ one step
    def _lr_scale(self) -> float:
        if self.train_config.warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.global_step + 1) / self.train_config.warmup_steps)

    def _tiered_collections(self) -> list[Any]:
        """The model's embedding collections holding a tiered table (prefetch targets)."""
        modules = self.model.modules()
        return [m for m in modules if isinstance(m, EmbeddingCollection) and m.has_disk_tier]

    def train_step(self, batch: Batch, upcoming: Batch | None = None) -> float:
        """One step on `batch`. `upcoming`, the batch after it, lets tiered tables read its
        rows from disk while this step computes."""
        if batch.labels.shape[1]:  # an unlabelled log (a retriever's interactions): all kept
            batch = downsample_negatives(
                batch,
                self.train_config.negative_sampling_rate,
                self.train_config.seed,
                self.global_step,
            )
        self.model.train()
        self.model.set_event_time(self.clock.advance(batch.timestamps))
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", self.train_config.dense_lr) * self._lr_scale()
        step = self.global_step + 1
        check = self.health is not None and self.health.due(step)
        if check:
            self.health.watch_activations(self.model)
        try:
            with torch.autocast(
                batch.dense.device.type,
                dtype=torch.bfloat16,
                enabled=self.train_config.precision == "bf16",
            ):
                output = self.forward_module(batch)
            if upcoming is not None:
                for collection in self._tiered_collections():
                    collection.prefetch(upcoming)
        finally:
            if check:
                self.health.unwatch(step)
        objective = self.model.objective(output, batch)
        loss = objective.loss
        accumulate = self.train_config.grad_accumulation_steps
        regularization = self.model.regularization()
        total = loss if regularization is None else loss + regularization
        (total / accumulate if accumulate > 1 else total).backward()  # rows: not yet
        self._micro += 1
        self._loss_terms += objective.terms
        self._check_gradients = check
        if self._micro == accumulate:
            self.optimizer_step()
            if self.optimizer_steps % self.train_config.evict_every_steps == 0:
                self.evict()
            else:
                self.keep_budgets()
        self.global_step += 1
        self.samples_trained += batch.size
        self.last_objective = objective
        self.losses.append(float(loss.detach()))
        if self.health is not None:
            self._watch_health(check)
        return self.losses[-1]

    def _watch_health(self, checked: bool) -> None:
        """The loss every step; the tables on check steps; report what started firing."""
        health = self.health
        health.check_loss(self.global_step, self.losses[-1])
        if checked:
            health.check_tables(self.global_step, self.model.dynamic_tables())
        fired = health.take_fired()
        if fired:
            self.report_health(fired)

    def report_health(self, fired: list[HealthWarning]) -> None:
        if self.health.stop_on_warning:
            self.health_stops.extend(fired)
        if self.on_health is not None:
            self.on_health(fired)
            return
        if self.run_dir is not None:
            metrics = self._run_metrics()
            metrics.scalars("health", {w.key: w.value for w in fired}, self.global_step)
            metrics.flush()
        if (status_dir := self.status_dir()) is not None:
            status = {
                "phase": "train",
                "epoch": self.epoch + 1,
                "step": self.global_step,
                "health": self.health.active_json(),
                "updated": time.time(),
            }
            write_atomic(status_dir / "status.json", json.dumps(json_ready(status), indent=1))

    def status_dir(self) -> Path | None:
        """Where this process writes the run's status.json (health warnings); None: nowhere."""
        return self.run_dir

    def raise_if_health_stop(self, now: bool = False) -> None:
        """Under `train.health: stop`, end the run once a rule has fired: at the next check
        step (where every rank of a torchrun job decides together), or `now` (all ranks are
        at the same point, e.g. an epoch's end). The caller checkpoints first."""
        health = self.health
        if health is None or not health.stop_on_warning:
            return
        if not now and not health.due(self.global_step):
            return
        if self.agree_any(bool(self.health_stops)):
            raise HealthStop(
                self.health_stops[0]
                if self.health_stops
                else HealthWarning("other_rank", "", "a health rule fired on another rank",
                                   float("nan"), self.global_step)
            )

    def agree_any(self, flag: bool) -> bool:
        """Whether any process says yes (one process: itself)."""
        return flag

    def optimizer_step(self) -> bool:
        """One step of every gradient waiting — dense parameters and embedding rows together:
        clipped to one global norm (`train.grad_clip_norm`), skipped and counted when that norm
        is not finite (`train.skip_nonfinite_steps`). → whether it was applied."""
        cfg = self.train_config
        examples = self.step_examples()
        self._micro = self._loss_terms = 0
        self.optimizer_steps += 1
        if self.nothing_to_learn(examples):
            # A batch no loss term came from (a retriever's joined batch without a click): no
            # step — Adam's momentum would still move every weight — and no gradient check.
            self.empty_steps += 1
            self.sparse.zero_grad()
            self.optimizer.zero_grad(set_to_none=True)
            return False
        measured = bool(cfg.grad_clip_norm or cfg.skip_nonfinite_steps)
        if self._check_gradients:
            self.health.check_gradients(
                self.global_step + 1, self.model, self.sparse.gradients(), measured
            )
        applied = True
        if measured:
            norm = self.agreed_norm(clip_grad_norm_(self.model, cfg.grad_clip_norm, self.sparse))
            self.last_grad_norm = float(norm)
            applied = not cfg.skip_nonfinite_steps or bool(torch.isfinite(norm))
            if self.health is not None:
                self.health.check_grad_norm(self.global_step + 1, self.last_grad_norm)
        if applied:
            self.sparse.step(examples)
            self.optimizer.step()
        else:
            self.skipped_steps += 1
            self.sparse.zero_grad()
        self.optimizer.zero_grad(set_to_none=True)
        return applied

    def nothing_to_learn(self, examples: int) -> bool:
        """Whether the waiting gradients come from no example at all (one process: its own
        count; torchrun ranks always step together)."""
        return examples == 0

    def step_examples(self) -> int:
        """How many loss terms (examples × tasks) the waiting gradients average over: each
        micro-batch's loss is a mean divided by grad_accumulation_steps, so the step's gradient
        is the mean over accumulate × (mean micro-batch size) terms — exact for a short tail
        of an epoch too. FTRL tables scale by it (`SparseOptimizer.step`)."""
        if not self._micro:
            return 0
        accumulate = self.train_config.grad_accumulation_steps
        return round(accumulate * self._loss_terms / self._micro)

    def agreed_norm(self, norm: torch.Tensor) -> torch.Tensor:
        """The gradient norm every process decides on (one process: its own)."""
        return norm

    def quiesce_tables(self) -> None:
        """Before tables change outside a lookup: nothing may still be reading them (a
        prefetch thread) or owe them gradients (the hybrid sharded mode overrides this)."""
        for collection in self._tiered_collections():
            collection.wait_prefetch()

    def keep_budgets(self) -> None:
        """Tiered tables past their DRAM budget write rows down now, between evictions: new
        ids keep arriving, and the budget is what the machine was sized by."""
        tiered = self.__dict__.get("_disk_tables")
        if tiered is None:  # a model's tables are fixed once built: look them up once, not per step
            tiered = [t for t in self.model.dynamic_tables().values() if t.has_disk_tier]
            self._disk_tables = tiered
        over = [t for t in tiered if t.hot_rows > t.budget_rows]
        if over:
            self.quiesce_tables()
            for table in over:
                table.trim()

    def evict(self) -> int:
        self.quiesce_tables()
        evicted = 0
        for name, table in self.model.dynamic_tables().items():
            if table.ttl_seconds is not None or table.capacity is not None or table.has_disk_tier:
                before = len(table)
                deleted = int(table.evict(now=self.clock.now).numel())
                evicted += deleted
                if self.health is not None:
                    self.health.check_expiry(
                        self.global_step, name, deleted, before, self.clock.describe()
                    )
        self.rows_evicted += evicted
        return evicted

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, batches: Iterable[Batch], skip: int = 0) -> float:
        """One pass; `skip` batches are passed over (resuming mid-epoch). → mean loss."""
        losses: list[float] = []
        recent_labels: list[np.ndarray] = []
        recent_scores: list[np.ndarray] = []
        bar = tqdm(
            desc=f"epoch {self.epoch + 1}",
            unit=" samples",
            total=self.epoch_rows,  # known from the second epoch on: then a bar with an ETA
            disable=None if self.progress else True,  # None: on a terminal only, never in logs
            leave=False,
            dynamic_ncols=True,
        )
        rows_seen = 0
        start = time.perf_counter()
        ahead = any(c.prefetches for c in self._tiered_collections())
        for i, (batch, upcoming) in enumerate(_with_next(batches, ahead)):
            if i < skip:
                continue
            t0 = time.perf_counter()
            loss = self.train_step(batch, upcoming)
            self.train_seconds += time.perf_counter() - t0
            self.step_in_epoch = i + 1
            every = self.train_config.checkpoint_every_steps
            if every and self.global_step % every == 0:
                self.save_progress()
            losses.append(loss)
            if (scored := self.last_objective).scores is not None:
                recent_labels.append(scored.labels.numpy())
                recent_scores.append(scored.scores.numpy())
                del recent_labels[:-20], recent_scores[:-20]
            bar.update(batch.size)
            rows_seen += batch.size
            if self.global_step % self.train_config.log_every_steps == 0:
                running_auc = (  # a model with no labels (a retriever) has no AUC
                    auc(np.concatenate(recent_labels), np.concatenate(recent_scores))
                    if recent_labels
                    else float("nan")
                )
                speed = (self.samples_trained - self._samples_at_start) / max(
                    self.train_seconds, 1e-9
                )
                shown = {"loss": f"{np.mean(losses[-20:]):.4f}"}
                if recent_labels:
                    shown["auc"] = f"{running_auc:.4f}"
                bar.set_postfix(**shown, rate=f"{speed:,.0f}/s")
                self._log(
                    {
                        "phase": "train",
                        "epoch": self.epoch + 1,
                        "step": self.global_step,
                        "samples": self.samples_trained,
                        "loss": np.mean(losses[-20:]),
                        "auc": running_auc,
                        "samples_per_s": speed,
                        "lr": self.optimizer.param_groups[0]["lr"],
                    }
                )
            self.raise_if_health_stop()
        if skip == 0:
            self.epoch_rows = rows_seen
        if self._micro:  # the epoch's last batches, fewer than grad_accumulation_steps
            self.optimizer_step()
        self.evict()  # what an epoch's end saves (checkpoint, model) keeps TTL and capacity
        bar.close()
        self._epoch_seconds = time.perf_counter() - start
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        """Lifetime metrics per task over `batches` (a rows-scored bar on a terminal)."""
        self.model.eval()
        acc = MetricAccumulator(self.tasks)
        bar = tqdm(desc="evaluating", unit=" rows", disable=None if self.progress else True,
                   leave=False)
        for batch in batches:
            bar.update(batch.size)
            preds = self.model.predict(batch)
            acc.update(
                batch.labels[:, : preds.shape[1]].numpy(),
                preds.numpy(),
                None if batch.group_ids is None else batch.group_ids.numpy(),
            )
        bar.close()
        return acc.lifetime()

    def fit(
        self,
        train: Callable[[int], Iterable[Batch]],
        valid: Callable[[], Iterable[Batch]] | None = None,
        start_epoch: int = 0,
        skip_steps: int = 0,
    ) -> TrainResult:
        """`train(epoch)` yields the epoch's batches; `valid()` the validation batches."""
        bad_epochs = 0
        metrics: dict[str, dict[str, float]] = {}
        history = []
        self.epoch = start_epoch
        self._samples_at_start = self.samples_trained
        for epoch in range(start_epoch, self.train_config.epochs):
            self.epoch = epoch
            try:
                loss = self.train_epoch(
                    train(epoch), skip=skip_steps if epoch == start_epoch else 0
                )
            except HealthStop:
                self.save_progress()  # `--resume` continues from the step it stopped at
                self._flush_metrics()
                raise
            self.step_in_epoch = 0
            entry = {"epoch": epoch + 1, "train_loss": loss}
            if valid is not None:
                metrics = self.evaluate(valid())
                first = metrics[self.tasks[0]]
                entry.update({f"valid_{k}": v for k, v in first.items()})
                self._log(
                    {
                        "phase": "valid",
                        "epoch": epoch + 1,
                        "step": self.global_step,
                        "samples": self.samples_trained,
                        **{k: first.get(k) for k in ("auc", "logloss", "ne", "calibration")},
                    }
                )
                if self.health is not None:
                    self.health.check_generalization(self.global_step, loss, first["logloss"])
                    if fired := self.health.take_fired():
                        self.report_health(fired)
                if self._improves(first):
                    self.best_epoch, self.best_score = epoch + 1, self._score(first)
                    bad_epochs = 0
                    self.save_best(metrics)
                else:
                    bad_epochs += 1
            history.append(entry)
            self.save_progress(metrics, epoch_done=True)
            try:
                self.raise_if_health_stop(now=True)
            except HealthStop:
                self._flush_metrics()
                raise
            patience = self.train_config.early_stopping_patience
            if patience and bad_epochs >= patience:
                break
        if self.best_epoch and self.best_epoch != self.epoch + 1:
            if self.restore_best():
                metrics = self.evaluate(valid()) if valid is not None else metrics
            else:  # no copy of it (no run directory, or deleted): report what is kept
                if self.run_dir is not None:
                    print(
                        f"warning: the model of the best epoch ({self.best_epoch}) is missing "
                        f"from {self.run_dir / BEST}; keeping epoch {self.epoch + 1}",
                        file=sys.stderr,
                    )
                self.best_epoch = self.epoch + 1
        if not metrics and valid is not None:  # resumed after the last epoch: nothing trained
            metrics = self.evaluate(valid())
        trained_now = self.samples_trained - self._samples_at_start  # a resumed run's own work
        speed = trained_now / self.train_seconds if self.train_seconds else 0.0
        self._flush_metrics()
        return TrainResult(
            metrics,
            speed,
            self.epoch + 1,
            self.best_epoch or self.epoch + 1,
            self.global_step,
            history,
            self.resumed_from_step,
            self.skipped_steps,
        )

    def _score(self, metrics: dict[str, float]) -> float:
        """The first task's `train.early_stopping_metric`, larger = better."""
        metric = self.train_config.early_stopping_metric
        value = metrics[metric]
        return value if metric == "auc" else -value

    def _improves(self, metrics: dict[str, float]) -> bool:
        score = self._score(metrics)
        return not math.isnan(score) and (self.best_score is None or score > self.best_score)

    def save_best(self, metrics: dict) -> None:
        """Keep the model of the best epoch so far (RUN_DIR/best), for `restore_best`."""
        if self.run_dir is not None:
            self.checkpoint(self.run_dir / BEST, metrics)

    def restore_best(self) -> bool:
        """Put the best epoch's weights and tables back into the model (the last epoch's stay in
        the checkpoint, for `--resume`). → False when no best model was kept."""
        if self.run_dir is None or not (self.run_dir / BEST).exists():
            return False
        from streamrec.models.persistence import load_model

        self.model.load_state_dict(load_model(self.run_dir / BEST).model.state_dict())
        return True

    # ------------------------------------------------------------------ persistence
    def position(self, epoch_done: bool = False) -> dict[str, Any]:
        return {
            "epoch": self.epoch + 1 if epoch_done else self.epoch,
            "step_in_epoch": 0 if epoch_done else self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer_steps": self.optimizer_steps,
            "skipped_steps": self.skipped_steps,
            "samples": self.samples_trained,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "event_clock": self.clock.now,  # a resumed run's expiry clock goes on from here
        }

    def restore_position(self, position: dict) -> None:
        """Continue the counts and the best epoch of the checkpoint `position` came from."""
        self.global_step = position["global_step"]
        self.samples_trained = position["samples"]
        self.resumed_from_step = position["global_step"]
        self.optimizer_steps = position.get("optimizer_steps", self.global_step)
        self.skipped_steps = position.get("skipped_steps", 0)
        self.best_epoch = position.get("best_epoch", 0)
        self.best_score = position.get("best_score")
        self.clock.now = position.get("event_clock")

    def save_progress(self, metrics: dict | None = None, epoch_done: bool = False) -> None:
        """The checkpoint that `--resume` continues from (the next version in RUN_DIR/checkpoint):
        written at every epoch end and every `train.checkpoint_every_steps` steps."""
        if self.run_dir is not None:
            RunDir(self.run_dir).save_checkpoint(
                lambda path: self.checkpoint(path, metrics, epoch_done)
            )

    def checkpoint(
        self, path: str | Path, metrics: dict | None = None, epoch_done: bool = False
    ) -> Path:
        return save_checkpoint(
            path,
            self.model,
            self.config,
            self.optimizer,
            self.position(epoch_done),
            metrics,
            self.extra_manifest,
        )

    def _log(self, row: dict) -> None:
        """A metrics row (metrics.csv and TensorBoard, `train/run_metrics.py`); training rows
        add table sizes, evictions, skipped steps and the gradient norm as scalars."""
        if self.run_dir is None:
            return
        self._run_metrics().row(row)
        if row.get("phase") == "train":
            step = int(row["step"])
            own = self.model.dynamic_tables()
            self.run_metrics.scalars("table_rows", {n: len(t) for n, t in own.items()}, step)
            self.run_metrics.scalars(  # new ids given a row / refused one, this process
                "ids_admitted", {n: t.new_ids_admitted for n, t in own.items()}, step
            )
            self.run_metrics.scalars(
                "ids_refused", {n: t.new_ids_seen - t.new_ids_admitted for n, t in own.items()},
                step,
            )
            counts = {"rows_evicted": self.rows_evicted, "skipped_steps": self.skipped_steps}
            if self.last_grad_norm is not None:
                counts["grad_norm"] = self.last_grad_norm
            self.run_metrics.scalars("train", counts, step)

    def log_scalars(self, group: str, values: dict[str, float]) -> None:
        """Scalars at the current step (TensorBoard and metrics.csv), written now: a job's
        own measurements after `fit`, such as a retriever's recall."""
        if self.run_dir is None:
            return
        self._run_metrics().scalars(group, values, self.global_step)
        self._flush_metrics()

    def _run_metrics(self) -> RunMetrics:
        if self.run_metrics is None:
            self.run_metrics = RunMetrics(
                self.run_dir, self.resumed_from_step, mlflow=self.mlflow
            )
        return self.run_metrics

    def _flush_metrics(self) -> None:
        if self.run_metrics is not None:
            self.run_metrics.flush()


def _with_next(batches: Iterable[Batch], lookahead: bool) -> Iterator[tuple[Batch, Batch | None]]:
    """(batch, the batch after it or None); without `lookahead`, (batch, None) — no batch is
    read before its turn."""
    if not lookahead:
        for batch in batches:
            yield batch, None
        return
    previous = None
    for batch in batches:
        if previous is not None:
            yield previous, batch
        previous = batch
    if previous is not None:
        yield previous, None
