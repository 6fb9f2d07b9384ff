"""Stream addresses: a folder, kafka:// or redis:// — and a URL is never taken for a path."""

from pathlib import Path

import pytest

from streamrec.data.stream.address import StreamAddressError, parse_stream_address


@pytest.mark.parametrize(
    ("text", "kind", "servers", "name", "db"),
    [
        ("runs/events", "local", "", "", 0),
        ("/abs/events", "local", "", "", 0),
        ("C:/logs/events", "local", "", "", 0),
        ("file:///data/events", "local", "", "", 0),
        ("kafka://127.0.0.1:9092/events", "kafka", "127.0.0.1:9092", "events", 0),
        ("kafka://b1:9092,b2:9093/clicks.v2", "kafka", "b1:9092,b2:9093", "clicks.v2", 0),
        ("redis://localhost:6379/events", "redis", "localhost:6379", "events", 0),
        ("redis://localhost:6379/3/events", "redis", "localhost:6379", "events", 3),
        ("rediss://[::1]:6380/events", "redis", "[::1]:6380", "events", 0),
    ],
)
def test_each_form_names_its_backend(text, kind, servers, name, db):
    address = parse_stream_address(text)
    assert (address.kind, address.servers, address.name, address.db) == (kind, servers, name, db)
    if kind == "local":
        assert address.path == Path(text.removeprefix("file://"))
    else:
        assert parse_stream_address(str(address)) == address  # round trip


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("kafka:/127.0.0.1:9092/events", "needs 'kafka://'"),
        ("kafka:events", "needs 'kafka://'"),
        ("http://host:80/events", "unknown stream scheme 'http'"),
        ("s3://bucket/events", "unknown stream scheme 's3'"),
        ("kafka://127.0.0.1/events", "HOST:PORT"),
        ("kafka://127.0.0.1:9092", "one topic"),
        ("kafka://127.0.0.1:9092/a/b", "one topic"),
        ("redis://h:1,h:2/events", "one server"),
        ("redis://h:1/x/events", "DB/STREAM"),
        ("file://relative/path", "file:///"),
    ],
)
def test_a_malformed_or_unknown_url_is_refused_with_the_forms(text, says):
    with pytest.raises(StreamAddressError, match=says):
        parse_stream_address(text)


def test_produce_to_a_bad_url_creates_no_folder(tmp_path, ml_small_dir, monkeypatch):
    """The bug this replaces: `--to kafka:/HOST/TOPIC` exited 0 having written ./kafka:."""
    from typer.testing import CliRunner

    from streamrec.cli import app

    monkeypatch.chdir(tmp_path)
    ratings = str(ml_small_dir / "ratings.csv")
    result = CliRunner().invoke(app, ["stream", "produce", ratings, "--to", "kafka:/h:1/t"])
    assert result.exit_code != 0
    assert "kafka://HOST:PORT/TOPIC" in result.output
    assert list(tmp_path.iterdir()) == []
