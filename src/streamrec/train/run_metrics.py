"""RunMetrics: a run's metric rows, kept twice — RUN/metrics.csv (what `streamrec report`
draws) and TensorBoard scalars under RUN/tb (train/tensorboard.py) — from one call, so the two
never disagree. Batch training, two-tower and online runs all write through it."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamrec.train.tensorboard import TensorBoardLog

if TYPE_CHECKING:
    from streamrec.train.mlflow_run import MlflowRun

METRIC_COLUMNS = [
    "phase",
    "epoch",
    "step",
    "samples",
    "loss",
    "auc",
    "logloss",
    "ne",
    "calibration",
    "samples_per_s",
    "lr",
]


class RunMetrics:
    def __init__(
        self,
        run_dir: str | Path,
        resumed_step: int | None = None,
        note: Callable[[str], None] | None = None,
        mlflow: MlflowRun | None = None,
    ) -> None:
        """resumed_step: the step a resumed run continues from (TensorBoard forgets what a
        killed process logged after it); note: where a one-time remark goes (a log); mlflow:
        an MLflow run that receives every row and scalar too (`train/mlflow_run.py`)."""
        self.path = Path(run_dir) / "metrics.csv"
        self.tensorboard = TensorBoardLog(run_dir, resumed_step, note)
        self.mlflow = mlflow

    def row(self, row: Mapping[str, Any]) -> None:
        """One metrics.csv row (columns METRIC_COLUMNS; `phase`: train | valid | online) and
        its numbers as `<phase>/<column>` scalars at `step`."""
        new = not self.path.exists()
        with self.path.open("a+b") as raw:
            if raw.tell() and (raw.seek(-1, 2), raw.read(1))[1] != b"\n":
                raw.write(b"\n")  # a process killed mid-row left half a line: end it
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, METRIC_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        values = {k: v for k, v in row.items() if k not in ("phase", "epoch", "step")}
        self.tensorboard.scalars(str(row.get("phase", "train")), values, int(row["step"]))
        if self.mlflow is not None:
            self.mlflow.metrics(str(row.get("phase", "train")), values, int(row["step"]))

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """Extra TensorBoard scalars that have no metrics.csv column."""
        self.tensorboard.scalars(prefix, values, step)
        if self.mlflow is not None:
            self.mlflow.metrics(prefix, values, step)

    def flush(self) -> None:
        self.tensorboard.flush()
