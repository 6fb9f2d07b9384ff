"""The `streamrec` command. Each sub-command is a thin layer over the library: parse options,
call one function, print a table for people or one JSON object with `--json`."""

from __future__ import annotations

import errno
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from streamrec.data.errors import DataError

app = typer.Typer(
    help="streamrec: train and serve recommendation models with collisionless dynamic "
    "embedding tables.\n\nStart with `streamrec demo`, or `streamrec data inspect FILE`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at and convert input data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"streamrec {version('streamrec')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """streamrec: train and serve recommendation models with collisionless dynamic embedding
    tables.

    Start with `streamrec demo`, or `streamrec data inspect FILE`."""

FORMAT_HELP = (
    "criteo | csv | tsv | parquet | libsvm | libfm | libffm | ml-100k | ml-latest-small "
    "(default: from the name)"
)


def _read_mapping(path: Path) -> dict:
    """A YAML (or JSON) file holding one mapping, or a CLI error naming the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        _fail(f"{path}: {e}")
    if not isinstance(data, dict):
        _fail(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _measured(value: float, digits: int = 4) -> str:
    """A metric for people: `undefined` where it is NaN (one class), never `nan`."""
    return f"{value:.{digits}f}" if value == value else "undefined"


def _unavailable(error: Exception | str) -> None:
    """A stream service did not answer within its timeout (exit 4)."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(4)


def _health_stop(stop: Exception, out: Path | str) -> None:
    """`train.health: stop` ended the run: say why and where it can continue (exit 3)."""
    typer.echo(f"error: {stop}", err=True)
    typer.echo(f"{out}: {getattr(stop, 'saved', '')}", err=True)
    raise typer.Exit(3)


def _print_json(obj: dict) -> None:
    """One strict JSON object: an undefined metric is null with the reason, never NaN."""
    from streamrec.train.metrics import json_ready

    typer.echo(json.dumps(json_ready(obj), allow_nan=False))


@data_app.command("inspect")
def data_inspect(
    path: str | None = typer.Argument(
        None, help="Input file (for ml-100k: a folder, or nothing to use the cache/wheel)."
    ),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed row."),
    dead_letter: Path | None = typer.Option(
        None, help="Write malformed rows here (JSON lines) instead of only counting them."
    ),
) -> None:
    """Count rows, and per column the missing and distinct values."""
    from streamrec.data.errors import DeadLetter
    from streamrec.data.formats import read_records
    from streamrec.data.inspect import inspect_records

    dead = DeadLetter(dead_letter, strict=strict)
    try:
        report = inspect_records(read_records(path, fmt, dead))
    except DataError as e:
        _fail(str(e))
    finally:
        dead.close()
    report["rejected_rows"] = dead.count
    if as_json:
        _print_json(report)
        return
    typer.echo(f"{report['rows']:,} rows, {len(report['columns'])} columns")
    typer.echo(f"{'column':<16}{'type':<22}{'missing':>10}{'distinct':>12}")
    for name, c in report["columns"].items():
        typer.echo(f"{name:<16}{c['type']:<22}{c['missing']:>10,}{c['distinct']:>12,}")
    if dead.count:
        where = f" (written to {dead_letter})" if dead_letter else ""
        typer.echo(f"{dead.count} malformed rows skipped{where}; first: {dead.examples[0]}")


@data_app.command("convert")
def data_convert(
    src: str = typer.Argument(..., help="Input file."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output .parquet file (default: SRC with .parquet)."
    ),
    legacy_dst: Path | None = typer.Argument(
        None, hidden=True, help="Deprecated: the output as a second argument; use --out."
    ),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed row."),
    dead_letter: Path | None = typer.Option(None, help="Write malformed rows here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Convert a file to Parquet (streamed, bounded memory; written atomically):
    `streamrec data convert train.tsv --format criteo --out train.parquet`."""
    import pyarrow.parquet as pq

    from streamrec.data.errors import DeadLetter
    from streamrec.data.formats import read_records

    if out is not None and legacy_dst is not None:
        _fail(f"two outputs given ({legacy_dst} and --out {out}): give only --out")
    dst = out or legacy_dst
    if dst is None:
        source = Path(src)
        if source.suffix == ".parquet" or source.is_dir():
            _fail(f"{src}: give the output file with --out FILE.parquet")
        dst = source.with_suffix(".parquet")
    if legacy_dst is not None:
        typer.echo("note: the output as a second argument is deprecated; use --out", err=True)
    dead = DeadLetter(dead_letter, strict=strict)
    tmp = dst.with_name(dst.name + ".tmp")
    rows = 0
    writer = None
    try:
        for batch in read_records(src, fmt, dead):
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema)
            writer.write_batch(batch)
            rows += batch.num_rows
    except DataError as e:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        _fail(str(e))
    finally:
        dead.close()
    if writer is None:
        _fail(f"{src}: no rows to convert")
    writer.close()
    tmp.replace(dst)
    result = {"rows": rows, "rejected_rows": dead.count, "output": str(dst)}
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"wrote {rows:,} rows to {dst} ({dead.count} malformed rows skipped)")


SET_HELP = (
    "Override a config key, validated like the file: --set train.epochs=3 --set "
    "default_table.lr=0.01 (repeatable; values read as YAML)."
)
STREAM_HELP = (
    "A stream: a local folder (see `stream produce`), kafka://HOST:PORT/TOPIC (every "
    "partition) or redis://HOST:PORT/STREAM; client settings (e.g. SASL) from the config's "
    "online.source."
)
SEED_HELP = "Override train.seed (initialisation, shuffling, sampling)."


def _load_config(path: Path, overrides: list[str] | None = None, seed: int | None = None):
    from streamrec.config import ConfigError, load_config

    sets = list(overrides or []) + ([f"train.seed={seed}"] if seed is not None else [])
    try:
        return load_config(path, sets)
    except ConfigError as e:
        _fail(str(e))


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="Job config (YAML): schema, tables, data, model."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default: runs/<name>-<time>)."
    ),
    epochs: int | None = typer.Option(None, help="Override train.epochs."),
    seed: int | None = typer.Option(None, help=SEED_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(
        False,
        help="Continue from OUT/checkpoint if it exists (workers that torchrun restarts after "
        "a failure, with --max-restarts, do this by themselves).",
    ),
    warm_start: Path | None = typer.Option(
        None, "--warm-start",
        help="Continue from this model (a model, run or checkpoint directory) on the config's "
        "data: its tables with their optimizer state, dense weights and fitted schema (a "
        "checkpoint also brings the dense optimizer's state) — the daily retrain. The config "
        "must train the same architecture on the same features.",
    ),
    mlflow: str | None = typer.Option(
        None, "--mlflow",
        help="Also track the run in MLflow: a tracking URI (http://…, sqlite:///…, file:…) or "
        "`local` (a store in OUT/mlruns) — params, metrics per step, artifacts, the model "
        "version (the train.mlflow key; needs the mlflow extra).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model from a config; writes OUT/model (serve it, eval it) and OUT/metrics.csv.
    Its manifest records its lineage: parent model, data files (sizes, SHA-256), config hash,
    code version."""
    import time

    from streamrec import api
    from streamrec.config import ConfigError
    from streamrec.schema import SchemaError
    from streamrec.store import CorruptModelError
    from streamrec.train.run_dir import RunDirBusy

    sets = list(overrides or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    cfg = _load_config(config, sets, seed)  # --epochs validated as --set train.epochs is
    if mlflow:
        cfg.train.mlflow = mlflow
    out = out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    from streamrec.train.health import HealthStop

    for note in cfg.data.advice():
        typer.echo(f"note: {note}", err=True)

    try:
        report = api.train(cfg, out, resume=resume, progress=not quiet, warm_start=warm_start)
    except (DataError, ConfigError, CorruptModelError, RunDirBusy, SchemaError, ValueError) as e:
        _fail(str(e))
    except HealthStop as e:
        _health_stop(e, out)
    if report.rank != 0:
        return
    from streamrec.train.metrics import measurement_warnings

    if report.model_type == "ranking":
        for warning in measurement_warnings(report.metrics):
            typer.echo(f"warning: {warning}", err=True)
    if as_json:
        _print_json(report.to_json())
        return
    if report.model_type == "retrieval":
        typer.echo("  ".join(f"{k} {v:.4f}" for k, v in report.metrics.items()))
    for task, m in report.metrics.items() if report.model_type == "ranking" else ():
        typer.echo(
            f"{task}: AUC {_measured(m['auc'])}  logloss {m['logloss']:.4f}  "
            f"NE {_measured(m['ne'])}  calibration {_measured(m['calibration'], 3)}"
        )
    typer.echo(f"{report.samples_per_s:,.0f} samples/s; model saved to {report.model_dir}")


@app.command("eval")
def evaluate(
    model_dir: Path = typer.Argument(..., help="A model directory or a training run directory."),
    data: str | None = typer.Option(
        None, help="Data to score (default: the validation split in the model's config)."
    ),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a saved model: AUC, GAUC, logloss, NE and calibration per task (a retriever:
    recall@10/@50 and NDCG@10 on its config's test split)."""
    from streamrec import api
    from streamrec.config import ConfigError
    from streamrec.store import CorruptModelError

    try:
        report = api.evaluate(model_dir, data, fmt, progress=not as_json)
    except (DataError, ConfigError, CorruptModelError, ValueError) as e:
        _fail(str(e))
    if as_json:
        _print_json(report)
        return
    for task, m in report["metrics"].items():
        if isinstance(m, dict):
            typer.echo(f"{task}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
        else:
            typer.echo(f"{task} {m:.4f}")
    if "feature_importance" in report:  # a gated pre-ranker (COLD)
        typer.echo("feature importance (mean gate): " + "  ".join(
            f"{f} {g:.3f}" for f, g in report["feature_importance"].items()))


@app.command("impressions")
def impressions(
    retriever: Path = typer.Argument(..., help="A two-tower run or model directory."),
    config: Path = typer.Argument(
        ..., help="The ranker's job config: its data (training split) and context features."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The training set to write (.parquet)."),
    candidates: int | None = typer.Option(
        None, min=1,
        help="Items retrieved per user (default: the retriever's retrieval.candidates). Use "
        "the K1 the server retrieves (serve --retrieve): the ranker must see the tail it is "
        "to push down.",
    ),
    target_fraction: float = typer.Option(
        0.2, min=0.01, max=0.99, help="Each user's last share of interactions: the future."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Build an impression-shaped training set for a cascade's ranker: each user's past,
    queried against the retriever as the server queries it; the items it returns, labelled 1
    where the user interacted with them later — with their retrieval score as a feature.
    Train the ranker on it (examples/ml100k_impression_ranker.yaml) so that it orders what
    retrieval hands it, instead of learning a different objective."""
    from streamrec import api
    from streamrec.config import ConfigError
    from streamrec.store import CorruptModelError

    cfg = _load_config(config)
    try:
        report = api.impressions(retriever, cfg, out, candidates, target_fraction)
    except (DataError, ConfigError, CorruptModelError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if as_json:
        _print_json(report)
    else:
        typer.echo(
            f"wrote {report['rows']:,} impressions of {report['users']:,} users to {out} "
            f"({report['candidates']} per user, {report['positive_rate']:.1%} positive)"
        )


@app.command("predict")
def predict(
    model_dir: Path = typer.Argument(..., help="A model directory or a training run directory."),
    data: str = typer.Option(..., help="Rows to score (CSV, TSV, Parquet, Criteo TSV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scores: a .parquet, .csv or .tsv file."),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    id_column: str | None = typer.Option(
        None, help="A column of DATA copied beside each score (e.g. a request or row id)."
    ),
    precision: str | None = typer.Option(
        None,
        help="fp32 or bf16 (dense layers in bfloat16: faster on CPUs with bf16 units, scores "
        "within ~1e-3). Default: the model's train.precision.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score every row of a file: one calibrated score per row (per task), in row order, read
    with the column types the model was trained on. Malformed rows are dead-lettered, as in
    training; the output appears only once complete."""
    from streamrec import api
    from streamrec.schema import SchemaError
    from streamrec.store import CorruptModelError

    if not out.parent.is_dir():
        _fail(f"{out}: the folder {out.parent} does not exist — create it, or write elsewhere")
    try:
        report = api.predict(
            model_dir, data, out, fmt, id_column, precision, progress=not as_json
        )
    except (DataError, CorruptModelError, SchemaError, ValueError) as e:
        _fail(str(e))
    if as_json:
        _print_json(report)
    else:
        typer.echo(
            f"scored {report['rows']:,} rows into {out} ({report['rows_per_s']:,.0f} rows/s; "
            f"{report['rejected_rows']} malformed rows skipped)"
        )


@app.command("export")
def export(
    model_dir: Path = typer.Argument(..., help="A model directory or a training run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the serving copy."),
    drop_zero_rows: bool = typer.Option(
        False, help="Leave out rows that are exactly zero (FTRL with L1)."
    ),
    rows: str = typer.Option(
        "fp32", "--rows",
        help="How the copy stores embedding rows: fp32; int16 or int8 — codes with a per-row "
        "scale and offset, de-quantised only as rows are read (int8: dim + 8 bytes a row "
        "instead of 4·dim; error ≤ half a row's range / 255). Tables where it would not save "
        "bytes (dim ≤ 3 for int8, ≤ 5 for int16) or with a disk tier stay fp32. Deltas keep "
        "applying: their rows are encoded as they arrive.",
    ),
    format_: str = typer.Option(
        "streamrec", "--format",
        help="streamrec: a model directory for `streamrec serve`; onnx: a Triton model "
        "repository (OUT/NAME/config.pbtxt, OUT/NAME/1/model.onnx) holding one self-contained "
        "ONNX graph — ids map to rows inside it; a snapshot that does not follow deltas.",
    ),
    name: str | None = typer.Option(
        None, help="onnx: the model's name in the repository (default: the config's name, "
        "what /v2/models/{name} serves)."
    ),
    strings_from: list[Path] = typer.Option(
        [], "--strings-from",
        help="onnx: more files (in the config's data format) holding string ids the tables "
        "learnt — e.g. from a stream; the training data is read too when it is still there "
        "(if not, the first file also gives the rows the export is checked on).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Write a serving copy of a model: no optimizer state and no admission sketches (what
    serving never reads), optionally no all-zero rows and fewer-bit rows (--rows int8) — or,
    with --format onnx, a Triton / onnxruntime model checked to score as the model does
    (within 1e-5) on its training data."""
    from streamrec.embedding.quantized_rows import ROW_PRECISIONS
    from streamrec.models.persistence import export_for_serving
    from streamrec.store import CorruptModelError

    if rows not in ROW_PRECISIONS:
        _fail(f"--rows {rows!r}: choose one of {', '.join(ROW_PRECISIONS)}")
    if format_ == "onnx":
        if rows != "fp32":
            _fail("--rows is for --format streamrec (an ONNX graph holds fp32 rows)")
        _export_onnx(model_dir, out, name, strings_from, drop_zero_rows, as_json)
        return
    if format_ != "streamrec":
        _fail(f"--format {format_!r}: choose streamrec or onnx")
    try:
        report = export_for_serving(model_dir, out, drop_zero_rows, rows)
    except CorruptModelError as e:
        _fail(str(e))
    if as_json:
        _print_json(report)
    else:
        fewer = sorted(t for t, p in report["row_precision"].items() if p != "fp32")
        typer.echo(
            f"wrote {report['model_dir']}: tables {report['table_bytes_before']:,} → "
            f"{report['table_bytes_after']:,} bytes, {report['zero_rows_dropped']:,} "
            "zero rows dropped"
            + (f", {rows} rows in {len(fewer)} of {len(report['row_precision'])} tables "
               f"(weights {report['weight_bytes_before']:,} → {report['weight_bytes_after']:,}"
               " bytes)" if rows != "fp32" else "")
        )


def _export_onnx(
    model_dir: Path, out: Path, name: str | None, strings_from: list[Path],
    drop_zero_rows: bool, as_json: bool,
) -> None:
    if drop_zero_rows:
        _fail("--drop-zero-rows is for --format streamrec (an ONNX graph keeps every row)")
    try:
        from streamrec.onnx_export import OnnxExportError, export_onnx
    except ImportError as e:
        _fail(f"--format onnx needs onnx and onnxruntime ({e}): pip install 'streamrec[onnx]'")
    from streamrec.store import CorruptModelError

    try:
        report = export_onnx(model_dir, out, name, strings_from)
    except (OnnxExportError, CorruptModelError) as e:
        _fail(str(e))
    if as_json:
        _print_json(report)
        return
    unreachable = sum(report["unreachable_rows"].values())
    typer.echo(
        f"wrote {report['repository']} (Triton, onnxruntime backend): {report['bytes']:,} "
        f"bytes; {report['checked_rows']} training rows score within "
        f"{report['max_abs_difference']:.1e} of the model"
        + (f"; {unreachable:,} rows keyed by strings not in the data are unreachable"
           if unreachable else "")
        + (f"; {report['rejected_rows']:,} malformed rows of the data read were skipped"
           if report["rejected_rows"] else "")
    )


@app.command("push")
def push(
    candidate: Path | None = typer.Argument(
        None, help="The model to publish: a model, run or checkpoint directory."
    ),
    to: Path = typer.Option(
        ..., "--to",
        help="The serving folder (a folder of versions; `streamrec serve DIR` serves its "
        "newest and reloads when a push lands).",
    ),
    gate: str = typer.Option(
        "auc >= baseline - 0.002",
        help='Conditions the candidate must meet, on the same validation rows as the model '
        'serving now: METRIC OP baseline[ ± NUMBER] or METRIC OP NUMBER, joined by "and"; '
        "METRIC is auc, gauc, logloss, ne or calibration (TASK.METRIC for another task).",
    ),
    data: str | None = typer.Option(
        None, help="Validation data for both models (default: the candidate's validation split)."
    ),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    rollback: bool = typer.Option(
        False, "--rollback", help="Serve the version before the newest again (no CANDIDATE)."
    ),
    mlflow: str | None = typer.Option(
        None, "--mlflow",
        help="Register each published model as a new version of the MLflow registered model "
        "named by its config (a tracking URI; needs the mlflow extra).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Publish a model to a serving folder if it passes a gate against the model serving now;
    keeps the two before it for --rollback. Exit code 1 when the gate refuses the candidate.
    Every push, refusal and rollback is appended to DIR/push_log.jsonl."""
    from streamrec import push as publishing
    from streamrec.config import ConfigError
    from streamrec.store import CorruptModelError

    if rollback == (candidate is not None):
        _fail("give a CANDIDATE to push, or --rollback alone")
    try:
        if rollback:
            report = publishing.rollback(to)
        else:
            report = publishing.push(candidate, to, gate, data, fmt, mlflow=mlflow)
    except (publishing.PushError, CorruptModelError, ConfigError, DataError, ValueError,
            RuntimeError) as e:
        _fail(str(e))
    if as_json:
        _print_json(report)
    elif rollback:
        typer.echo(
            f"rolled back: {to} serves version {report['version']} (model "
            f"{report['serving_after']}) instead of {report['rolled_back']}"
        )
    else:
        for check in report["checks"]:
            mark = "✔" if check["passed"] else "✘"
            typer.echo(f"{mark} {check['condition']}: {check['why']}")
        if report["published"]:
            before = report["serving_before"]
            typer.echo(
                f"published as version {report['version']} of {to}: model "
                + (f"{before} → " if before is not None else "")
                + f"{report['serving_after']}"
            )
        else:
            typer.echo(f"refused: {to} still serves model {report['serving_before']}")
    if not rollback and not report["published"]:
        raise typer.Exit(1)


@app.command("report")
def report(
    run_dir: Path = typer.Argument(
        ..., help="A run directory of train, two-tower or online training (holds metrics.csv)."
    ),
    out: Path | None = typer.Option(None, help="PNG path (default: RUN_DIR/curves.png)."),
) -> None:
    """Plot the training loss / AUC and validation AUC curves of a run to a PNG."""
    from streamrec.train.report import plot_run

    try:
        path = plot_run(run_dir, out)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its models."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the whole loop on MovieLens-100k: train a retriever and a ranker on impressions
    built from its candidates, serve them with an impression log and POST /v1/feedback, let
    simulated users click for a few rounds while the online trainer joins, learns and syncs,
    and compare CTR with the same models frozen."""
    from streamrec.demo import run_demo

    def log(message: str) -> None:
        typer.echo(message, err=as_json)

    try:
        result = run_demo(workdir, progress=not quiet, log=log)
    except DataError as e:
        _fail(str(e))
    if as_json:
        _print_json(result)
    else:
        ctr = result["loop"]["ctr"]
        typer.echo(
            f"retrieval recall@50 {result['recall@50']:.3f} (popularity "
            f"{result['baseline_recall@50']:.3f}); served list recall@50 "
            f"{result['cascade_recall@50']['ranked']:.3f}; loop CTR {ctr['closed_loop']:.3f} "
            f"vs frozen {ctr['frozen']:.3f}; event → delta p99 "
            f"{result['event_to_delta_p99_s']:.2f} s; done in {result['seconds']:.0f} s; "
            f"models under {workdir}"
        )


@app.command("serve")
def serve(
    model_dir: Path = typer.Argument(..., help="A model directory or a training run directory."),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you say so)."),
    port: int = typer.Option(8080, envvar="STREAMREC_PORT", help="TCP port (or $STREAMREC_PORT)."),
    token: str | None = typer.Option(
        None,
        help="Require 'Authorization: Bearer TOKEN' on every request but the health probes "
        "(/healthz, /readyz), which orchestrators call without one.",
    ),
    token_guards_health: bool = typer.Option(
        False, help="With --token, require it on /healthz and /readyz too."
    ),
    deltas: Path | None = typer.Option(
        None, help="Folder of deltas to apply while serving (default: beside the model)."
    ),
    max_batch_rows: int | None = typer.Option(None, help="Rows per inference batch."),
    max_delay_ms: float | None = typer.Option(None, help="Batching wait from the oldest request."),
    cache_bytes: int | None = typer.Option(None, help="Prediction cache budget (0 = off)."),
    retriever: Path | None = typer.Option(
        None, help="A two-tower run/model directory: enables POST /v1/recommend."
    ),
    retriever_deltas: Path | None = typer.Option(
        None,
        help="Folder of the retriever's deltas (an online run of it) to serve as they come "
        "(default: beside the retriever's model). Each is indexed with its towers, then both "
        "swap in together; the retriever's memory doubles while it learns.",
    ),
    preranker: Path | None = typer.Option(
        None,
        help="A pre-ranking run/model directory (e.g. model.name: cold): /v1/recommend then "
        "pre-ranks the retrieved items and ranks only the best --prerank-keep.",
    ),
    prerank_keep: int = typer.Option(100, min=1, help="Items the pre-ranker passes on (K2)."),
    retrieve: int | None = typer.Option(
        None,
        min=1,
        help="Items /v1/recommend retrieves (K1; default: the retriever's "
        "retrieval.candidates).",
    ),
    slo_ms: float | None = typer.Option(
        None,
        min=1,
        help="Turn on compute allocation (DCAF) for /v1/recommend with this p99 latency "
        "target: each request gets a level of work (K1 retrieved, K2 ranked) by its value, "
        "and a controller shrinks work as load rises instead of answering 503. Levels: "
        "serving.compute_allocation in the model's config.",
    ),
    capacity_qps: float | None = typer.Option(
        None,
        min=0.001,
        help="With --slo-ms: requests/s the server answers within the SLO doing the most work "
        "(measure it: benchmarks/overload.py); corrected online from latency.",
    ),
    allocation_file: Path | None = typer.Option(
        None,
        "--allocation",
        help="A YAML/JSON file of serving.compute_allocation fields (e.g. levels measured by "
        "benchmarks/overload.py) replacing the model's; turns compute allocation on.",
    ),
    variant: list[str] = typer.Option(
        [],
        help="NAME=DIR: another ranking model (run or model directory) served beside the first, "
        "following its own deltas. Repeat for more. Every response says which answered.",
    ),
    name: str = typer.Option("main", help="The first model's variant name."),
    split: str | None = typer.Option(
        None,
        help="Traffic weights, e.g. main=90,new=10 (default: all to the first; with "
        "--policy thompson: where the bandit starts from is irrelevant).",
    ),
    sticky: bool = typer.Option(
        False, help="Route by a hash of the user (user_id): a user keeps their variant."
    ),
    shadow: list[str] = typer.Option(
        [],
        help="A --variant that scores every ranking call after it is answered: compared, "
        "logged (GET /v1/variants), never returned. Repeat for more.",
    ),
    policy: str = typer.Option(
        "weights",
        help="weights: the --split; thompson: Thompson sampling on each variant's click rate "
        "(needs --actions).",
    ),
    actions: str | None = typer.Option(
        None,
        help="The action stream (local log folder, kafka://…, redis://…): POST /v1/feedback "
        "appends users' actions to it (the records `online --actions` joins), and with "
        "variants its clicks reward the variant that answered.",
    ),
    log_impressions: str | None = typer.Option(
        None,
        help="Log every answered /v1/recommend (request id, versions, the features used, "
        "each shown item with its position and every stage's score) to this stream (local "
        "folder, kafka://…, redis://…) — the impressions `online --source` joins with "
        "--actions. Written from a bounded queue: serving never waits; a full queue drops "
        "and counts (/metrics).",
    ),
    log_sample_rate: float | None = typer.Option(
        None, min=0.0001, max=1.0,
        help="Share of requests whose impressions are logged (serving.feedback.sample_rate, 1).",
    ),
    log_queue: int | None = typer.Option(
        None, min=1,
        help="Records waiting to be written, per stream, before an impression is dropped or "
        "an action refused with 503 (serving.feedback.max_queue, 10000).",
    ),
    log_rank: bool | None = typer.Option(
        None, "--log-rank/--no-log-rank",
        help="With --log-impressions, log /v1/rank answers too (needs an item_id; "
        "serving.feedback.log_rank).",
    ),
    reward_action: list[str] = typer.Option(
        ["click"], help="Action types that count as a reward. Repeat for more."
    ),
    explore_share: float | None = typer.Option(
        None, min=0.0, max=1.0,
        help="Share of /v1/recommend's slots (the last ones) given to items the ranker is "
        "unsure of, by Thompson sampling on its uncertainty (lr, gbdt_lr; "
        "serving.explore_share, 0).",
    ),
    rows: str | None = typer.Option(
        None, "--rows",
        help="Hold the ranking models' embedding rows as int8 or int16 codes with a per-row "
        "scale and offset, at load and every reload (serving.row_precision, fp32); "
        "de-quantised only as a request reads them. int8: dim + 8 bytes a row, not 4·dim.",
    ),
    threads: int | None = typer.Option(
        None,
        help="Torch / numba threads of the inference worker (default: serving.threads, 1). "
        "1 suits small batches: idle OpenMP workers spin and take CPU from request handling.",
    ),
) -> None:
    """Serve a model over HTTP: /v1/rank, /v1/recommend, /v1/model, /healthz, /readyz,
    /metrics. A corrupt delta never stops it: it is skipped and reported (/readyz says
    `degraded`) until the next full model covers it."""
    import uvicorn

    from streamrec.serving.app import create_app
    from streamrec.serving.batcher import quiet_garbage_collector, use_compute_threads
    from streamrec.serving.http import server_config
    from streamrec.serving.options import ServerOptions
    from streamrec.serving.variants import variant_options

    use_compute_threads(threads or 1)  # the main thread: loading, and request handling
    from streamrec.store import CorruptModelError

    _require_free_port(host, port)  # before minutes of model loading, not after

    try:
        api = create_app(
            ServerOptions(
                model_dir=model_dir,
                deltas_dir=deltas,
                token=token,
                guard_health=token_guards_health,
                retriever_dir=retriever,
                retriever_deltas=retriever_deltas,
                retrieve=retrieve,
                preranker_dir=preranker,
                prerank_keep=prerank_keep,
                variants=variant_options(
                    variant, name, split, tuple(shadow), policy, sticky, actions,
                    tuple(reward_action),
                ),
                serving=_given(
                    max_batch_rows=max_batch_rows,
                    max_delay_ms=max_delay_ms,
                    cache_bytes=cache_bytes,
                    threads=threads,
                    explore_share=explore_share,
                    row_precision=rows,
                    compute_allocation=_allocation_changes(slo_ms, capacity_qps, allocation_file),
                    feedback=_given(
                        impressions=log_impressions,
                        actions=actions,
                        sample_rate=log_sample_rate,
                        max_queue=log_queue,
                        log_rank=log_rank,
                    ),
                ),
            )
        )
    except (CorruptModelError, FileNotFoundError, ValueError) as e:  # pydantic's too
        _fail(str(e))
    typer.echo(f"serving {model_dir} on http://{host}:{port}", err=True)
    quiet_garbage_collector()
    server = uvicorn.Server(server_config(api, host, port, api.state.server.settings))
    server.run()
    if not server.started:  # e.g. the port is taken: uvicorn has logged why
        raise typer.Exit(1)


def _given(**values: Any) -> dict[str, Any]:
    """The flags the user gave (not None, and not an empty section): only these change the
    model's `serving:` settings."""
    return {k: v for k, v in values.items() if v is not None and v != {}}


def _allocation_changes(
    slo_ms: float | None, capacity_qps: float | None, allocation_file: Path | None
) -> dict[str, Any] | None:
    """serving.compute_allocation changes: any of the three flags turns allocation on; the
    file's fields first, the flags over them."""
    if slo_ms is None and capacity_qps is None and allocation_file is None:
        return None
    changes = _read_mapping(allocation_file) if allocation_file is not None else {}
    return {**changes, "enabled": True, **_given(slo_ms=slo_ms, capacity_qps=capacity_qps)}


def _require_free_port(host: str, port: int) -> None:
    """Exit 1 with one line when HOST:PORT cannot be listened on (taken, or no such address)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            typer.echo(
                f"error: cannot listen on {host}:{port}: {e.strerror} — stop what holds it or "
                "pass another --port",
                err=True,
            )
            raise typer.Exit(1) from None


variants_app = typer.Typer(
    help="Model variants of a running server (serve --variant): look, promote, roll back.",
    no_args_is_help=True,
)
app.add_typer(variants_app, name="variants")


def _variants_call(method: str, path: str, url: str, token: str | None, body=None) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        _fail(f"{url}: {e}")
    if r.status_code != 200:
        try:
            reason = r.json().get("error", r.text)
        except ValueError:
            reason = r.text
        _fail(f"{url}{path}: HTTP {r.status_code}: {reason}")
    return r.json()


_URL = typer.Option("http://127.0.0.1:8080", help="The server's base URL.")
_TOKEN = typer.Option(None, envvar="STREAMREC_TOKEN", help="Its --token (or $STREAMREC_TOKEN).")


@variants_app.command("show")
def variants_show(
    url: str = _URL,
    token: str | None = _TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Each variant: version, role, share of traffic, clicks, whether it is in rotation."""
    body = _variants_call("GET", "/v1/variants", url, token)
    if as_json:
        _print_json(body)
        return
    typer.echo(f"policy {body['policy']}, weights {body['weights']}")
    for v in body["variants"]:
        state = "in rotation" if v["in_rotation"] else f"OUT: {v['out_reason']}"
        if v["role"] == "shadow":
            state = f"shadow, mean |Δscore| {v['shadow_mean_abs_diff']}"
        typer.echo(
            f"  {v['name']:12s} {v['version']:>16s}  {100 * v['share']:5.1f}% of "
            f"{v['served']} served, {v['clicks']} clicked  {state}"
        )


@variants_app.command("promote")
def variants_promote(
    variant: str = typer.Argument(..., help="The variant to give all traffic."),
    url: str = _URL,
    token: str | None = _TOKEN,
) -> None:
    """All traffic to one variant; the previous split is kept for `variants rollback`."""
    body = _variants_call("POST", "/v1/variants/promote", url, token, {"variant": variant})
    typer.echo(f"promoted {variant}: weights {body['weights']}")


@variants_app.command("rollback")
def variants_rollback(url: str = _URL, token: str | None = _TOKEN) -> None:
    """Back to the split (and policy) before the last promotion."""
    body = _variants_call("POST", "/v1/variants/rollback", url, token)
    typer.echo(f"rolled back: weights {body['weights']}, policy {body['policy']}")


bench_app = typer.Typer(help="Load generators and measurements.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("serve")
def bench_serve(
    url: str = typer.Option("http://127.0.0.1:8080", help="Server base URL."),
    qps: float = typer.Option(50.0, help="Mean request rate (Poisson arrivals, open loop)."),
    duration: float = typer.Option(10.0, help="Seconds to send requests."),
    candidates: int = typer.Option(100, help="Candidates per /v1/rank request."),
    token: str | None = typer.Option(None, help="Bearer token, if the server needs one."),
    seed: int = typer.Option(0, help="Seed for arrivals and ids."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Open-loop load on /v1/rank: p50/p99/p99.9 latency, achieved QPS and errors."""
    import asyncio

    import httpx

    from streamrec.serving.loadgen import run_load

    try:
        report = asyncio.run(run_load(url, qps, duration, candidates, token, seed))
    except (OSError, httpx.TransportError) as e:
        _unavailable(f"cannot reach {url}: {e or type(e).__name__} — is `streamrec serve` running?")
    if as_json:
        _print_json(report)
        return
    typer.echo(
        f"sent {report['sent']} requests at {report['achieved_qps']:.1f} QPS "
        f"(target {qps}); errors {report['errors']}"
    )
    typer.echo(
        f"latency ms: p50 {report['p50_ms']:.1f}  p99 {report['p99_ms']:.1f}  "
        f"p99.9 {report['p999_ms']:.1f}"
    )


@app.command("online")
def online(
    config: Path = typer.Argument(..., help="Job config (YAML), with an `online:` section."),
    source: str = typer.Option(..., help=STREAM_HELP),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run directory: checkpoint, deltas, "
        "status.json. Restarting with the same OUT resumes exactly.",
    ),
    stop_when_idle: float | None = typer.Option(
        None, help="Stop after this many seconds without new events (default: run forever)."
    ),
    init_model: Path | None = typer.Option(None, help="Start from this trained model."),
    actions: str | None = typer.Option(
        None,
        help="A stream of user actions (same forms as --source): --source is then the "
        "impressions stream, and the two are joined into labelled examples (online.join in "
        "the config).",
    ),
    group: str = typer.Option(
        "default",
        help="Consumer group: whose committed offsets (Kafka, local log) or pending entries "
        "(Redis) a start without a checkpoint continues from.",
    ),
    seed: int | None = typer.Option(None, help=SEED_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    service_timeout: float | None = typer.Option(
        None,
        help="Seconds Kafka / Redis may be unreachable (at the start, or while running) before "
        "the run ends with exit 4 and a checkpoint; shorter outages are waited out. Default: "
        "online.service_timeout_seconds (30).",
    ),
    mlflow: str | None = typer.Option(
        None, "--mlflow",
        help="Also track the run in MLflow: a tracking URI (http://…, sqlite:///…, file:…) or "
        "`local` (a store in OUT/mlruns) — params, metrics per step, artifacts, the model "
        "version (the train.mlflow key; needs the mlflow extra).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final status as JSON."),
) -> None:
    """Train online from a stream: predict first, then learn; deltas for the server."""
    from streamrec import api
    from streamrec.config import ConfigError
    from streamrec.data.stream.address import StreamAddressError
    from streamrec.data.stream.base import StreamPositionError, StreamUnavailable
    from streamrec.store import CorruptModelError
    from streamrec.train.health import HealthStop
    from streamrec.train.run_dir import RunDirBusy

    if service_timeout is not None:
        overrides = [*(overrides or []), f"online.service_timeout_seconds={service_timeout}"]
    cfg = _load_config(config, overrides, seed)
    if mlflow:
        cfg.train.mlflow = mlflow
    try:
        status = api.online(
            cfg,
            source,
            out,
            actions=actions,
            group=group,
            stop_when_idle=stop_when_idle,
            init_model=init_model,
            log=lambda m: typer.echo(m, err=True),
            progress=not as_json,  # and tqdm itself stays off when stderr is not a terminal
        )
    except (
        FileNotFoundError,
        DataError,
        ConfigError,
        CorruptModelError,
        RunDirBusy,
        StreamAddressError,
        StreamPositionError,
        ImportError,
    ) as e:
        _fail(str(e))
    except StreamUnavailable as e:
        _unavailable(e)
    except HealthStop as e:
        _health_stop(e, out)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        _print_json(status)
    else:
        typer.echo(
            f"trained {status['events_trained']:,} events "
            f"({status['dead_lettered']} dead-lettered); last delta "
            f"{status['last_delta_version']}"
        )


config_app = typer.Typer(
    help="The job config: a starting config for your data, its JSON schema and reference.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")


@config_app.command("init")
def config_init(
    data: str = typer.Argument(..., help="Your training data (a file; MovieLens: a folder)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Where to write the config (default: <data name>.yaml here)."
    ),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    label: str | None = typer.Option(
        None, help="The label column (default: one named label, click, target, y, rating…)."
    ),
    valid: str | None = typer.Option(None, help="Validation data, if you have a file of it."),
    force: bool = typer.Option(False, help="Overwrite --out if it exists."),
) -> None:
    """Write a commented starting config for your data that trains as is: the label, and per
    column an id table or a dense feature, each line saying why. Edit it, then `streamrec
    train CONFIG`."""
    from streamrec.config_init import starting_config
    from streamrec.store.atomic import write_atomic

    target = out or Path(f"{Path(data).stem or 'job'}.yaml")
    if target.exists() and not force:
        _fail(f"{target} exists: give another --out, or --force to overwrite it")
    try:
        text = starting_config(data, fmt, label, valid, target)
    except DataError as e:
        _fail(str(e))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text)
    typer.echo(text, nl=False)
    typer.echo(f"wrote {target}: edit it, then  streamrec train {target}", err=True)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of a job config (for editors and validators)."""
    from streamrec.config_docs import json_schema

    typer.echo(json.dumps(json_schema(), indent=1))


@config_app.command("docs")
def config_docs() -> None:
    """Print the config reference as Markdown (what docs/config.md holds)."""
    from streamrec.config_docs import markdown

    typer.echo(markdown(), nl=False)


stream_app = typer.Typer(help="Write datasets into streams.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")


@stream_app.command("produce")
def stream_produce(
    dataset: str = typer.Argument(..., help="A data file or folder (as for `data inspect`)."),
    to: str = typer.Option(..., help=STREAM_HELP),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    key: str | None = typer.Option(
        None,
        help="A column whose value keys each message: Kafka keeps one key's messages in one "
        "partition, in order (e.g. the user id). Default: no key (spread over partitions).",
    ),
    config: Path | None = typer.Option(
        None,
        help="A job config whose online.source client settings (e.g. Kafka SASL) to use.",
    ),
    speed: float = typer.Option(
        0.0,
        help="Replay at this multiple of real time (by the "
        "records' timestamps); 0 = as fast as possible.",
    ),
    timestamp: str = typer.Option("timestamp", help="The time column, for --speed."),
    service_timeout: float = typer.Option(
        30.0,
        help="Seconds to wait for Kafka / Redis to answer (at the start, and for each message) "
        "before giving up with exit 4.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Replay a time-ordered dataset into a stream, one JSON record per message."""
    import json as _json
    import time as _time

    from streamrec.data.formats import read_records
    from streamrec.data.stream.address import StreamAddressError, parse_stream_address
    from streamrec.data.stream.base import StreamUnavailable
    from streamrec.data.stream.connect import open_sink

    try:
        address = parse_stream_address(to)
        settings = dict(_load_config(config, None, None).online.source) if config else None
        sink = open_sink(address, settings, service_timeout)
    except (StreamAddressError, ImportError, ValueError) as e:
        _fail(str(e))
    except StreamUnavailable as e:
        _unavailable(e)
    first_ts = started = None
    try:
        for batch in read_records(dataset, fmt):
            if key is not None and key not in batch.schema.names:
                columns = ", ".join(batch.schema.names)
                raise DataError(f"--key {key}: {dataset} has no such column ({columns})")
            for record in batch.to_pylist():
                if speed > 0 and record.get(timestamp) is not None:
                    ts = float(record[timestamp])
                    if first_ts is None:
                        first_ts, started = ts, _time.monotonic()
                    wait = (ts - first_ts) / speed - (_time.monotonic() - started)
                    if wait > 0:
                        sink.flush()
                        _time.sleep(wait)
                value = _json.dumps(record, separators=(",", ":")).encode()
                message_key = None if key is None else str(record[key]).encode()
                sink.append_raw(value, message_key)
        sink.close()
    except StreamUnavailable as e:
        _unavailable(f"{e} ({sink.sent:,} messages appended to {address} before)")
    except (DataError, RuntimeError, OSError) as e:
        _fail(f"{e} ({sink.sent:,} messages appended to {address} before)")
    if as_json:
        _print_json({"stream": str(address), "messages": sink.sent})
    else:
        typer.echo(f"appended {sink.sent:,} messages to {address}")


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemError as e:
        # A signal that lands inside a numba-compiled call: its handler's exception (Ctrl-C,
        # or launch.py's SIGTERM exit) comes back wrapped as "returned a result with an
        # exception set". Exit as the signal says; the handler has already said why.
        # The handler's exception may sit deeper in the chain (a `finally` that raised while
        # it unwound): walk all of it.
        cause, seen = e.__cause__ or e.__context__, set()
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, KeyboardInterrupt):
                sys.exit(130)
            if isinstance(cause, SystemExit):
                sys.exit(cause.code)
            cause = cause.__cause__ or cause.__context__
        raise
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        # Every write is a temporary name renamed when complete: the last complete checkpoint
        # or model is intact, and the next start removes the partial one.
        where = f" ({e.filename})" if e.filename else ""
        typer.echo(f"error: {e.strerror}{where}: free space or write elsewhere; what was complete "
                   "before is intact and the next start continues from it", err=True)
        sys.exit(2)
    finally:
        # Finalise abandoned readers (pyarrow, stream clients) now, while their libraries are
        # alive: left to interpreter teardown, a C++ reader thread can abort the process
        # ("terminate called without an active exception", exit 134) after good work.
        gc.collect()


if __name__ == "__main__":
    main()
