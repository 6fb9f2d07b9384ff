"""TensorBoardLog: the run's scalars as TensorBoard event files under RUN/tb/.

`tensorboard --logdir RUN` then shows training and validation loss / AUC / NE / calibration,
learning rate, samples/s, table sizes and admission / eviction counts (train and two-tower
runs), and an online run's windowed metrics, lag and freshness. Every row that goes to
metrics.csv goes here too, so the two never disagree.

The writer needs the `tensorboard` package (`pip install 'streamrec[tensorboard]'`); without it
the run says so once in its log and writes metrics.csv only. Restarts append new event files
to the same folder; a resumed run starts with a purge at its resumed step, so TensorBoard drops
the steps the killed process logged after the checkpoint it resumed from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_MISSING_NOTE = (
    "TensorBoard event files are off: the `tensorboard` package is not installed "
    "(pip install 'streamrec[tensorboard]'); metrics.csv has the same numbers"
)


class TensorBoardLog:
    def __init__(
        self,
        run_dir: str | Path,
        resumed_step: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(run_dir) / "tb"
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # said once, never silently: to the run's log, else as a warning
            if log is not None:
                log(_MISSING_NOTE)
            else:
                warnings.warn(_MISSING_NOTE, stacklevel=2)
            return
        self._writer = SummaryWriter(str(self.path), purge_step=resumed_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """Each finite number in `values` as `prefix/name` at `step` (others are skipped)."""
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value != value or value in (float("inf"), float("-inf")):
                continue
            self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
