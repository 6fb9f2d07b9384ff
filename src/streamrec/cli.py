"""The `streamrec` command. Each sub-command is a thin layer over the library: parse options,
call one function, print a table for people or one JSON object with `--json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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

FORMAT_HELP = "criteo | csv | tsv | parquet | ml-100k | ml-latest-small (default: from the name)"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _print_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=None, sort_keys=False))


@data_app.command("inspect")
def data_inspect(
    path: str | None = typer.Argument(  # noqa: UP007 - typer needs Optional
        None, help="Input file (for ml-100k: a folder, or nothing to use the cache/wheel)."
    ),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),  # noqa: UP007
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed row."),
    dead_letter: Path | None = typer.Option(  # noqa: UP007
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
    dst: Path = typer.Argument(..., help="Output .parquet file."),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),  # noqa: UP007
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed row."),
    dead_letter: Path | None = typer.Option(None, help="Write malformed rows here."),  # noqa: UP007
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Convert a file to Parquet (streamed, bounded memory; written atomically)."""
    import pyarrow.parquet as pq

    from streamrec.data.errors import DeadLetter
    from streamrec.data.formats import read_records

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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
