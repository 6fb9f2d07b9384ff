"""The metrics of a saved ranking model on a file, or on its config's validation split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamrec.config import DataConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.formats import read_records
from streamrec.data.loader import BatchLoader
from streamrec.data.splits import open_splits
from streamrec.models.persistence import load_model
from streamrec.train.trainer import Trainer


def evaluate_model_dir(
    path: str | Path,
    data: str | None = None,
    fmt: str | None = None,
    progress: bool = False,
    data_config: DataConfig | None = None,
) -> dict:
    """Metrics of a saved model on `data` (default: the validation split of its config, or of
    `data_config` — to compare two models on the same rows)."""
    loaded = load_model(path)
    config = loaded.config
    kinds = loaded.input_kinds  # read files as the model was trained
    dead = DeadLetter()
    source: Callable | None
    if data is not None:

        def source():
            return read_records(
                data, fmt or config.data.format, dead, kinds=kinds, fields=config.data.fields
            )
    else:
        source = open_splits(data_config or config.data, dead, kinds).valid
        if source is None:
            raise ValueError("the model's config names no validation data: pass --data")
    trainer = Trainer(loaded.model, config, None, progress=progress)
    metrics = trainer.evaluate(BatchLoader(source, config.schema, 4096))
    result = {
        "metrics": metrics,
        "model_version": loaded.manifest.model_version,
        "rejected_rows": dead.count,
    }
    if hasattr(loaded.model, "gate_means"):  # COLD: which features earn their cost
        result["feature_importance"] = feature_importance(
            loaded.model, BatchLoader(source, config.schema, 4096)
        )
    return result


def feature_importance(model, batches) -> dict[str, float]:
    """A gated model's mean gate per feature group over `batches`, largest first."""
    model.eval()
    total, rows = None, 0
    for batch in batches:
        means = model.gate_means(batch) * batch.size
        total = means if total is None else total + means
        rows += batch.size
    if total is None:
        return {}
    values = (total / max(rows, 1)).tolist()
    return dict(sorted(zip(model.groups, values, strict=True), key=lambda kv: -kv[1]))
