"""Every run kind keeps its curves twice — metrics.csv and TensorBoard event files under RUN/tb —
and `streamrec report` draws them; read back here with TensorBoard's own event reader."""

import csv

import pytest

from streamrec.config import parse_config
from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.models import build_model
from streamrec.train.online import OnlineTrainer
from streamrec.train.report import plot_run
from streamrec.train.trainer import Trainer

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

RAW = {
    "name": "curves",
    "schema": {
        "labels": [{"name": "label"}],
        "timestamp": "timestamp",
        "embeddings": [{"name": "user_id", "kind": "int"}, {"name": "item_id", "kind": "int"}],
    },
    "default_table": {"dim": 8, "optimizer": "adagrad", "lr": 0.05},
    "data": {"batch_size": 200},
    "model": {"name": "deepfm", "params": {"hidden": [16]}},
    "train": {"epochs": 2, "log_every_steps": 5},
    "online": {"deterministic": True, "sync_every_batches": 3, "checkpoint_every_batches": 7},
}


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }


def test_a_training_run_writes_tensorboard_scalars_that_match_metrics_csv(tmp_path, ml100k):
    cfg = parse_config(RAW)
    batches = [cfg.schema.encode(ml100k.slice(i, 200)) for i in range(0, 4000, 200)]
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    trainer = Trainer(model, cfg, tmp_path / "run", progress=False)
    trainer.fit(lambda epoch: batches[:15], lambda: batches[15:])
    scalars = _scalars(tmp_path / "run")
    for tag in ("train/loss", "train/auc", "train/lr", "train/samples_per_s",
                "valid/auc", "valid/logloss", "valid/ne", "valid/calibration",
                "table_rows/user_id", "table_rows/item_id", "train/skipped_steps"):
        assert tag in scalars, (tag, sorted(scalars))
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        valid = [r for r in csv.DictReader(fh) if r["phase"] == "valid"]
    assert [s for s, _ in scalars["valid/auc"]] == [int(r["step"]) for r in valid]
    for (_, value), row in zip(scalars["valid/auc"], valid, strict=True):
        assert value == pytest.approx(float(row["auc"]), rel=1e-6)
    assert scalars["table_rows/item_id"][-1][1] == len(model.dynamic_tables()["item_id"])
    png = plot_run(tmp_path / "run")
    assert png.stat().st_size > 10_000


def test_an_online_run_keeps_history_and_report_draws_it(tmp_path, ml_small_dir):
    from streamrec.data.movielens import load_ml_latest_small

    log = LocalLog(tmp_path / "log")
    for record in load_ml_latest_small(ml_small_dir).slice(0, 3000).to_pylist():
        log.append(record)
    log.close()
    raw = {**RAW, "schema": {**RAW["schema"], "embeddings": RAW["schema"]["embeddings"]}}
    status = OnlineTrainer(
        parse_config(raw), LocalLogSource(tmp_path / "log"), tmp_path / "run", progress=False
    ).run(stop_when_idle=0.3)
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["phase"] == "online"]
    assert len(rows) >= 3 and int(rows[-1]["step"]) == status["events_trained"] == 3000
    assert [int(r["step"]) for r in rows] == sorted({int(r["step"]) for r in rows})
    scalars = _scalars(tmp_path / "run")
    assert {"online/auc", "online_label/auc", "stream/lag", "stream/event_to_delta_p99"} <= set(
        scalars
    )
    assert scalars["stream/lag"][-1] == (3000, 0.0)
    png = plot_run(tmp_path / "run")
    assert png.stat().st_size > 10_000


def test_a_half_written_row_from_a_killed_process_is_ended_not_merged(tmp_path):
    """kill -9 in the middle of a metrics.csv row: the next row starts on a line of its own,
    and `report` draws the good rows, skipping the half one."""
    from streamrec.train.run_metrics import RunMetrics

    log = RunMetrics(tmp_path)
    for step in (20, 40):
        log.row({"phase": "train", "epoch": 1, "step": step, "samples": step * 10, "loss": 0.6})
    with (tmp_path / "metrics.csv").open("a") as fh:
        fh.write("train,1,60,6")  # the process died here
    log.row({"phase": "train", "epoch": 1, "step": 80, "samples": 800, "loss": 0.5})
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["20", "40", "60", "80"]
    assert rows[-1]["loss"] == "0.5" and rows[2]["loss"] is None
    assert plot_run(tmp_path).exists()


def test_without_tensorboard_installed_the_run_says_so_and_keeps_metrics_csv(
    tmp_path, monkeypatch
):
    import sys

    from streamrec.train.run_metrics import RunMetrics

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.warns(UserWarning, match="streamrec\\[tensorboard\\]"):
        log = RunMetrics(tmp_path)
    log.row({"phase": "train", "epoch": 1, "step": 20, "samples": 200, "loss": 0.6})
    assert not log.tensorboard.enabled and not (tmp_path / "tb").exists()
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("train,1,20,200")
    lines: list[str] = []
    RunMetrics(tmp_path / "online", note=lines.append)  # an online run: into its log
    assert lines and "pip install" in lines[0]


def test_a_run_with_one_training_point_still_shows_it(tmp_path):
    """A one-epoch run shorter than log_every_steps logs one training row: drawn as a line
    it showed nothing (the README's Criteo run); it is drawn as a point."""
    from streamrec.train.report import curves_figure
    from streamrec.train.run_metrics import RunMetrics

    log = RunMetrics(tmp_path)
    log.row({"phase": "train", "epoch": 1, "step": 20, "samples": 5120, "loss": 0.52,
             "auc": 0.61})
    log.row({"phase": "valid", "epoch": 1, "step": 29, "samples": 7200, "logloss": 0.48,
             "auc": 0.72})
    fig = curves_figure(tmp_path)
    loss_axes = fig.axes[0]
    train = [line for line in loss_axes.lines if line.get_label() == "train loss (running)"]
    assert len(train) == 1 and train[0].get_marker() == "o"
    assert list(train[0].get_xdata()) == [5120.0] and list(train[0].get_ydata()) == [0.52]
