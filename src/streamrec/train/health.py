"""Training health rules: watch a run for the failure modes that waste days silently.

SageMaker Debugger's built-in rules, in our own code and on our own tensors:

    nonfinite_loss        the loss is NaN or ±inf (checked every step)
    loss_not_decreasing   the mean loss of the last `loss_window_steps` is not below the window
                          before it
    exploding_gradient    the gradients' global L2 norm (dense + embedding rows) above a bound
                          (every step: the trainer measures it anyway to skip NaN steps)
    vanishing_gradient    the dense gradients' L2 norm below a bound
    dead_relu             a share of a ReLU layer's units output 0 for a whole checked batch
    overfit               validation loss above training loss by a share, the gap widening
    embedding_norm_growth a table's mean row norm grew N× since the run's first check
    calibration_drift     online: a task's windowed calibration far from 1
    admission_starving    a table refuses nearly every new id it sees
    mass_expiry           one expiry pass deleted an unusual share of a table's rows (against
                          the table's own earlier passes), naming the clock it used

Each finding is a `HealthWarning` keyed by rule and subject (a layer, a table, a task). A key
is reported once when it starts firing and once when it clears, so a persistent problem is one
line, not one per step. The trainer puts the active warnings in status.json, TensorBoard
(`health/<rule>`: the measured value at each firing) and, for online runs, every delta's
manifest, from which the server's status page shows them. With `train.health: stop` a new
warning raises `HealthStop`; the trainer checkpoints and the CLI exits with code 3.

Costs: two float checks per step; every `check_every_steps` steps, forward hooks on the ReLU
layers for one batch, the dense gradient norm, a sample of ≤ 4096 rows per table (≈ 1% of
the benchmark DLRM's step time, within noise).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from streamrec.config import HealthRulesConfig

log = logging.getLogger("streamrec.health")

NORM_SAMPLE_ROWS = 4096  # rows per table behind its mean-norm estimate
RESUMABLE = "a checkpoint was saved; after fixing the cause, rerun with --resume"


@dataclass
class HealthWarning:
    rule: str
    subject: str  # "" for the whole model, else a layer / table / task
    message: str
    value: float  # what was measured (the TensorBoard scalar)
    step: int
    since: float = field(default_factory=time.time)
    last_step: int = -1  # the last step it was seen firing

    def __post_init__(self) -> None:
        self.last_step = self.step

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.subject}" if self.subject else self.rule

    def to_json(self) -> dict[str, Any]:
        value = self.value if math.isfinite(self.value) else str(self.value)
        return {
            "rule": self.rule,
            "subject": self.subject,
            "message": self.message,
            "value": value,
            "step": self.step,
            "since": self.since,
        }


class HealthStop(RuntimeError):
    """`train.health: stop` and a rule fired: the run ends (after a checkpoint)."""

    def __init__(self, warning: HealthWarning, saved: str = RESUMABLE) -> None:
        super().__init__(
            f"training stopped by the health rule {warning.key} at step {warning.step}: "
            f"{warning.message} (train.health: stop; set it to warn to continue, or tune "
            f"train.health_rules)"
        )
        self.warning = warning
        self.saved = saved  # what was kept, and how to continue


class HealthRules:
    def __init__(self, rules: HealthRulesConfig, mode: str = "warn") -> None:
        self.rules = rules
        self.stop_on_warning = mode == "stop"
        self.active: dict[str, HealthWarning] = {}
        self.fired: list[HealthWarning] = []  # new this step, for the trainer to log and act on
        self._losses: deque[float] = deque(maxlen=2 * rules.loss_window_steps)
        self._last_loss_check = 0
        self._first_norms: dict[str, float] = {}
        self._admission_seen: dict[str, tuple[int, int]] = {}
        self._hooks: list[Any] = []
        self._dead: dict[str, float] = {}  # layer → share of units dead on the watched batch
        self._gaps: list[float] = []
        self._expiry_shares: dict[str, float] = {}  # table → largest share a normal pass deleted

    # ------------------------------------------------------------------ bookkeeping
    def due(self, step: int) -> bool:
        return step % self.rules.check_every_steps == 0

    def _judge(self, rule: str, subject: str, firing: bool, value: float, step: int,
               message: str) -> None:
        """Record the state of one (rule, subject): fire on the way in, clear on the way out."""
        key = f"{rule}:{subject}" if subject else rule
        if firing and key not in self.active:
            warning = HealthWarning(rule, subject, message, value, step)
            self.active[key] = warning
            self.fired.append(warning)
            log.warning("health: %s (step %d)", message, step)
        elif firing:
            self.active[key].value = value
            self.active[key].last_step = step
        elif key in self.active:
            # Cleared only after a quiet check interval: a rule judged every step (the
            # gradient norm of a diverging run) would otherwise flap fire / clear each step.
            if step - self.active[key].last_step >= self.rules.check_every_steps:
                del self.active[key]
                log.warning("health: %s cleared at step %d", key, step)

    def take_fired(self) -> list[HealthWarning]:
        """The warnings that started since the last call (the trainer reports and acts on them)."""
        fired, self.fired = self.fired, []
        return fired

    def active_json(self) -> list[dict[str, Any]]:
        return [w.to_json() for w in self.active.values()]

    def raise_if_stopping(self, fired: list[HealthWarning]) -> None:
        if self.stop_on_warning and fired:
            raise HealthStop(fired[0])

    # ------------------------------------------------------------------ the loss
    def check_loss(self, step: int, loss: float) -> None:
        """Every step. NaN / inf fires at once; the window rule at each full window."""
        finite = math.isfinite(loss)
        self._judge("nonfinite_loss", "", not finite, loss, step,
                    f"the training loss is {loss} (a NaN or inf: a learning rate too high, a "
                    f"bad input value, a log of 0)")
        if not finite:
            return
        self._losses.append(loss)
        window = self.rules.loss_window_steps
        if len(self._losses) < 2 * window or step - self._last_loss_check < window:
            return
        self._last_loss_check = step
        losses = np.fromiter(self._losses, float)
        before, recent = losses[:window].mean(), losses[window:].mean()
        wanted = before * (1 - self.rules.loss_min_decrease)
        self._judge("loss_not_decreasing", "", recent >= wanted, recent, step,
                    f"the mean loss of the last {window} steps ({recent:.5f}) is not below the "
                    f"{window} before ({before:.5f})")

    # ------------------------------------------------------------------ gradients
    def check_grad_norm(self, step: int, norm: float) -> None:
        """Every step the trainer measures it: the global L2 norm of the gradients the step
        applies (dense parameters and embedding rows together). A divergence blows up within
        a few steps, faster than any check interval."""
        if not math.isfinite(norm):
            return  # a non-finite step is skipped and counted by the trainer
        bound = self.rules.exploding_grad_norm
        self._judge("exploding_gradient", "", norm > bound, norm, step,
                    f"the gradient norm is {norm:.4g}, over {bound:g} (lower the learning "
                    f"rate, or set train.grad_clip_norm)")

    def check_gradients(self, step: int, model: nn.Module, row_grads: list[torch.Tensor],
                        measured: bool) -> None:
        """On check steps, before the optimizer step: the dense gradients' norm alone (for
        vanishing), and the global norm when the trainer did not measure it (`measured`)."""
        dense = [p.grad for p in model.parameters() if p.grad is not None]
        if not dense:
            return
        dense_norm = float(torch.nn.utils.get_total_norm(dense))
        if not measured:
            rows = [g for g in row_grads if g is not None and g.numel()]
            self.check_grad_norm(step, float(torch.nn.utils.get_total_norm(dense + rows)))
        if math.isfinite(dense_norm):
            floor = self.rules.vanishing_grad_norm
            self._judge("vanishing_gradient", "", dense_norm < floor, dense_norm, step,
                        f"the dense gradient norm is {dense_norm:.3g}, under {floor:g}: the "
                        f"dense layers have stopped learning (saturated or dead activations)")

    # ------------------------------------------------------------------ activations
    def watch_activations(self, model: nn.Module) -> None:
        """Hook every ReLU for the next forward pass (`unwatch` after it)."""
        self._dead.clear()
        for name, module in model.named_modules():
            if isinstance(module, nn.ReLU):
                self._hooks.append(module.register_forward_hook(self._dead_share(name)))

    def _dead_share(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if output.dim() >= 2 and output.shape[0] > 1:
                alive = (output.detach() > 0).reshape(output.shape[0], -1).any(dim=0)
                self._dead[name] = 1.0 - float(alive.float().mean())

        return hook

    def unwatch(self, step: int) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        limit = self.rules.dead_relu_fraction
        for layer, dead in self._dead.items():
            self._judge("dead_relu", layer, dead >= limit, dead, step,
                        f"{dead:.0%} of the units of ReLU layer {layer} output 0 for every "
                        f"example of the batch (a bias or learning rate that pushed them "
                        f"negative: lower dense_lr, add warm-up)")

    # ------------------------------------------------------------------ tables
    def check_tables(self, step: int, tables: dict[str, Any]) -> None:
        for name, table in tables.items():
            self._check_norm(step, name, table)
            self._check_admission(step, name, table)

    def _check_norm(self, step: int, name: str, table: Any) -> None:
        if getattr(table.settings, "init_scale", 1.0) == 0:
            return  # rows that start at 0 (linear weights) grow by learning, not by diverging
        live = table.live_rows()
        if live.size == 0:
            return
        if live.size > NORM_SAMPLE_ROWS:
            live = live[np.linspace(0, live.size - 1, NORM_SAMPLE_ROWS).astype(np.int64)]
        norm = float(np.linalg.norm(table.gather_rows(live), axis=1).mean())
        first = self._first_norms.setdefault(name, norm)
        if first <= 0:
            self._first_norms[name] = norm
            return
        growth = norm / first
        self._judge("embedding_norm_growth", name, growth >= self.rules.embedding_norm_growth,
                    growth, step,
                    f"table {name}'s mean row norm grew {growth:.1f}× since the first check "
                    f"({first:.3g} → {norm:.3g}): its learning rate is too high or it needs "
                    f"weight decay / FTRL's λ2")

    def _check_admission(self, step: int, name: str, table: Any) -> None:
        seen, admitted = table.new_ids_seen, table.new_ids_admitted
        seen0, admitted0 = self._admission_seen.get(name, (0, 0))
        new, granted = seen - seen0, admitted - admitted0
        if new < self.rules.admission_min_ids:
            return  # too few new ids since the last verdict to judge; keep counting
        self._admission_seen[name] = (seen, admitted)
        refused = 1.0 - granted / new
        self._judge("admission_starving", name, refused >= self.rules.admission_starving,
                    refused, step,
                    f"table {name} refused a row to {refused:.1%} of the {new:,} new ids it saw "
                    f"(admit_min_count / admit_probability too strict for this traffic)")

    # ------------------------------------------------------------------ evaluations
    def check_generalization(self, step: int, train_loss: float, valid_loss: float) -> None:
        """After each validation: the train–validation gap, and whether it keeps widening."""
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)) or train_loss <= 0:
            return
        gap = (valid_loss - train_loss) / train_loss
        self._gaps.append(gap)
        runs = self.rules.overfit_evaluations
        recent = self._gaps[-(runs + 1):]
        widened = len(recent) == runs + 1 and bool(np.all(np.diff(recent) > 0))
        self._judge("overfit", "", widened and gap >= self.rules.overfit_gap, gap,
                    step,
                    f"validation loss {valid_loss:.5f} is {gap:.0%} above the training loss "
                    f"{train_loss:.5f} and the gap widened {runs} evaluations running (fewer "
                    f"epochs, early_stopping_patience, dropout, or weight decay)")

    def check_expiry(self, step: int, table: str, deleted: int, rows: int, clock: str) -> None:
        """After an expiry pass that deleted `deleted` of a table's `rows`: a share beyond
        `mass_expiry_share` and `mass_expiry_growth`× the largest an earlier pass deleted
        fires (a clock moved by bad event times deletes nearly everything at once). A table's
        first pass sets its history and is not judged: replaying an old log, the first pass
        legitimately deletes most rows (86% of ml-latest-small's users, 48% of its items)."""
        if rows <= 0:
            return
        share = deleted / rows
        usual = self._expiry_shares.get(table)
        firing = usual is not None and share >= self.rules.mass_expiry_share and share > (
            self.rules.mass_expiry_growth * usual
        )
        if not firing:
            self._expiry_shares[table] = max(usual or 0.0, share)
        usual = usual or 0.0
        self._judge("mass_expiry", table, firing, share, step,
                    f"one expiry pass deleted {deleted:,} of table {table}'s {rows:,} rows "
                    f"({share:.0%}; earlier passes at most {usual:.0%}) by the {clock}: check the "
                    f"stream's event times (schema.timestamp_unit, max_event_skew_seconds) "
                    f"and the table's ttl_seconds")

    def check_calibration(self, step: int, task: str, calibration: float | None,
                          positives: int) -> None:
        """Online: a window's mean prediction / mean label for one task."""
        if calibration is None or not math.isfinite(calibration):
            return
        if positives < self.rules.calibration_min_positives:
            return
        if step < self.rules.calibration_warmup_steps:
            return
        off = abs(calibration - 1.0)
        self._judge("calibration_drift", task, off > self.rules.calibration_drift, calibration,
                    step,
                    f"task {task}'s predictions average {calibration:.2f}× its label rate over "
                    f"the last window (the stream's label rate moved, or negatives are "
                    f"sampled without train.negative_sampling_rate)")
