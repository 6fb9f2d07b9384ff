"""Job configs: relative paths are relative to the config file, not the working directory."""

import os

import yaml

from streamrec.config import load_config, parse_config


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    raw = {
        "schema": {"labels": [{"name": "label"}], "embeddings": [{"name": "user"}]},
        "data": {"train": "../data/train.csv", "valid": ["../data/valid.csv", "/abs/v.csv"],
                 "dead_letter": "bad.jsonl"},
        "online": {"init_model": "../runs/model"},
    }
    (tmp_path / "jobs" / "job.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir("/")
    cfg = load_config(tmp_path / "jobs" / "job.yaml")
    assert cfg.data.train == os.path.join(tmp_path, "data", "train.csv")
    assert cfg.data.valid == [os.path.join(tmp_path, "data", "valid.csv"), "/abs/v.csv"]
    assert cfg.data.dead_letter == os.path.join(tmp_path, "jobs", "bad.jsonl")
    assert cfg.online.init_model == os.path.join(tmp_path, "runs", "model")
    assert parse_config(raw).data.train == "../data/train.csv"  # code-built: left as given


def test_docs_config_md_is_the_generated_reference():
    """docs/config.md is regenerated from the models; a key added without updating it fails
    here (fix: `streamrec config docs > docs/config.md`)."""
    from pathlib import Path

    from streamrec.config_docs import markdown

    page = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert page == markdown()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) > 100 and all(not line.endswith("|  |") for line in rows)  # described
    for key in ("`max_message_bytes`", "`snapshot_every_deltas`", "`threshold`", "`kind`"):
        assert key in page


def test_config_schema_command_prints_the_json_schema():
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "streamrec", "config", "schema"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert "schema" in schema["properties"] and "OnlineConfig" in schema["$defs"]
    assert schema["$defs"]["Label"]["properties"]["values"]["description"]


def test_malformed_field_ranges_and_label_maps_are_config_errors():
    import pytest

    from streamrec.config import ConfigError

    base = {"schema": {"labels": [{"name": "label"}], "embeddings": [{"name": "features"}]}}
    for fields in ({"a": [5]}, {"a": [5, 5]}, {"a": [-1, 3]}):
        with pytest.raises(ConfigError, match="data.fields"):
            parse_config({**base, "data": {"format": "libsvm", "fields": fields}})
    bad_label = {"schema": {"labels": [{"name": "y", "values": {"-1": 0, "1": 7}}]}}
    with pytest.raises(ConfigError, match="must map to 0 or 1"):
        parse_config(bad_label)


def test_a_change_made_in_code_is_validated_as_the_file_would_be():
    import pydantic
    import pytest

    cfg = load_config("examples/ml100k_deepfm.yaml")
    for section, field, bad in [
        (cfg.train, "epochs", 0),
        (cfg.data, "batch_size", -1),
        (cfg.default_table, "dim", 0),
        (cfg.serving, "max_batch_rows", 0),
        (cfg.train, "no_such_setting", 1),
    ]:
        with pytest.raises(pydantic.ValidationError):
            setattr(section, field, bad)
    cfg.train.epochs = 2  # a valid change is taken
    assert cfg.train.epochs == 2
