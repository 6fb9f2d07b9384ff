"""One MLflow run mirroring a streamrec run, for teams that track experiments in MLflow.

What goes there: params (the flattened config: `schema.embeddings.0.name`, `train.dense_lr`, …),
every metrics row and scalar `RunMetrics` writes (`train/auc`, `valid/logloss`, … at their
step), and at the end the artifacts — `curves.png` (the run report), `metrics.csv`, the
model's `manifest.json` and `model_dir.txt` (the model's path: the model itself stays where
`streamrec serve` reads it) — and tags: `streamrec.model_version`, `streamrec.code_version`,
`streamrec.run_dir`.

`uri`: any MLflow tracking URI (`http://…`, `sqlite:///…`, `file:…`) or `local`: a file store in
RUN/mlruns (MLflow keeps its file store in maintenance mode and asks for
MLFLOW_ALLOW_FILE_STORE=true, which `local` and `file:` URIs set; point a team at a tracking
server). The run's id is kept in RUN/mlflow_run_id, so a resumed run continues the same MLflow
run. Needs the `mlflow` extra (`mlflow-skinny`): a clear error says so when it is missing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamrec.store.atomic import write_atomic

log = logging.getLogger("streamrec.train")

LOCAL = "local"
RUN_ID_FILE = "mlflow_run_id"
_MAX_PARAM = 500  # characters: the limit of the oldest MLflow servers still in use
_BATCH = 100  # params / metrics per request: MLflow's own batch limit
_NAME_REFUSED = re.compile(r"[^A-Za-z0-9_\-. :/]")


class MlflowUnavailable(ValueError):
    """The `mlflow` extra is not installed, or the tracking store cannot be reached."""


def tracking_uri(uri: str, run_dir: Path) -> str:
    """`local` → a file store in RUN/mlruns; anything else as given."""
    if uri == LOCAL:
        return (Path(run_dir).resolve() / "mlruns").as_uri()
    return uri


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists → {"a.b.0.c": "value"}: one MLflow param per leaf."""
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        text = json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)
        return {prefix: text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 1] + "…"}
    out: dict[str, str] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


class MlflowRun:
    def __init__(self, client: Any, run_id: str, run_dir: Path) -> None:
        self.client = client
        self.run_id = run_id
        self.run_dir = run_dir
        self.failed = False  # the tracking server refused a write: metrics stop going there

    @classmethod
    def start(cls, uri: str, run_dir: str | Path, name: str, config: dict[str, Any]) -> MlflowRun:
        """The MLflow run of `run_dir`: continued when the run directory names one (a resumed
        run), else created in experiment `name` with the config as params."""
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise MlflowUnavailable(
                f"MLflow tracking needs the mlflow extra ({e}): pip install 'streamrec[mlflow]'"
            ) from None
        run_dir = Path(run_dir)
        uri = tracking_uri(uri, run_dir)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            return cls._started(client, run_dir, name, config)
        except Exception as e:  # a store that is down or refuses: say which, before training
            raise MlflowUnavailable(f"MLflow at {uri} did not start the run: {e}") from None

    @classmethod
    def _started(
        cls, client: Any, run_dir: Path, name: str, config: dict[str, Any]
    ) -> MlflowRun:
        from mlflow.entities import Param

        saved = run_dir / RUN_ID_FILE
        if saved.exists():
            run_id = saved.read_text().strip()
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id, run_dir)
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(name)
        )
        from streamrec.train.lineage import code_version

        run = client.create_run(
            experiment_id,
            run_name=run_dir.name,
            tags={"streamrec.run_dir": str(run_dir.resolve()),
                  "streamrec.code_version": code_version()},
        )
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), _BATCH):
            client.log_batch(run_id, params=params[i : i + _BATCH])
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(saved, run_id)
        return cls(client, run_id, run_dir)

    def metrics(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """Finite numeric values as `<prefix>/<name>` at `step` (None, text and NaN skipped:
        MLflow refuses them; characters MLflow refuses in a name, like `@`, become `_`). A
        tracking server that fails is reported once and then left alone: the run's own
        metrics.csv and TensorBoard still hold every value, and training goes on."""
        if self.failed:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(_NAME_REFUSED.sub("_", f"{prefix}/{k}"), float(v), now, int(step))
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        try:
            for i in range(0, len(batch), _BATCH):
                self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH])
        except Exception as e:  # the tracking server, not the training, failed
            self.failed = True
            log.warning("MLflow stopped taking metrics (%s); metrics.csv keeps them", e)

    def finish(self, model_dir: Path | None, status: str = "FINISHED") -> None:
        """Artifacts and tags of the finished run (see the module doc), then its status."""
        if model_dir is not None:
            from streamrec.store import read_manifest

            manifest = read_manifest(model_dir)
            self.client.set_tag(self.run_id, "streamrec.model_version", str(manifest.model_version))
            self.client.log_artifact(self.run_id, str(Path(model_dir) / "manifest.json"), "model")
            with tempfile.TemporaryDirectory() as tmp:
                pointer = Path(tmp) / "model_dir.txt"
                pointer.write_text(f"{Path(model_dir).resolve()}\n")
                self.client.log_artifact(self.run_id, str(pointer), "model")
        metrics_csv = self.run_dir / "metrics.csv"
        if metrics_csv.exists():
            self.client.log_artifact(self.run_id, str(metrics_csv))
            try:
                from streamrec.train.report import plot_run

                self.client.log_artifact(self.run_id, str(plot_run(self.run_dir)))
            except (ValueError, KeyError, OSError):  # nothing to draw yet: no curve
                pass
        self.client.set_terminated(self.run_id, status=status)


def register_model_version(
    uri: str, name: str, source: Path, tags: dict[str, str]
) -> dict[str, Any]:
    """Register `source` (a published model directory) as a new version of registered model
    `name` (created at its first version); → {name, version, source}."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise MlflowUnavailable(
            f"--mlflow needs the mlflow extra ({e}): pip install 'streamrec[mlflow]'"
        ) from None
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "already exists" not in str(e):
            raise
    version = client.create_model_version(name, source=str(source.resolve()), tags=tags)
    return {"name": name, "version": int(version.version), "source": version.source}
