"""Every section a writer of this streamrec puts in a manifest is declared by the typed
manifest (`store/manifest.py`): what readers get is typed, never a raw key lookup."""

from pathlib import Path

import pytest

from streamrec.store import CorruptModelError, read_manifest
from streamrec.store.manifest import parse_manifest


def _directories(run: Path) -> list[Path]:
    found = [run / "model", run / "best"]
    found += sorted(p for p in (run / "checkpoint").iterdir() if p.name.isdigit())
    return [p for p in found if (p / "manifest.json").exists()]


def test_the_ranker_and_retriever_runs_write_only_declared_sections(trained_run, retriever_run):
    directories = _directories(trained_run) + _directories(retriever_run)
    assert len(directories) >= 4
    for directory in directories:
        manifest = read_manifest(directory)
        assert manifest.model_extra == {}, (directory, sorted(manifest.model_extra))
    checkpoint = read_manifest(_directories(trained_run)[-1])
    assert checkpoint.trainer is not None and checkpoint.trainer.position["global_step"] > 0
    retriever = read_manifest(retriever_run)
    assert retriever.is_retrieval and retriever.retrieval.items > 1000


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("model_version", "soon", "model_version"),
        ("tables", {"t": {"file": "t", "rows": 1, "dim": 0, "version": 0, "config": {}}},
         "tables.t.dim"),
        ("input_kinds", {"user_id": "integer"}, "input_kinds.user_id"),
        ("model_type", "ranker", "model_type"),
        ("retrieval", {"index": {}, "dim": 8}, "retrieval.items"),
        ("trainer", {"position": {}}, "trainer.optimizer"),
        ("online", {"next_offset": -1}, "online.next_offset"),
        ("files", {"a": "not-a-sha"}, "checksum"),
    ],
)
def test_a_malformed_field_is_refused_with_its_name(trained_run, field, value, named):
    raw = read_manifest(trained_run).model_dump(mode="json", by_alias=True)
    raw[field] = value
    with pytest.raises(CorruptModelError, match=named.replace(".", r"\.")):
        parse_manifest(raw, "manifest.json")


@pytest.mark.parametrize("field", ["format", "created", "model_version", "config", "tables"])
def test_a_missing_required_field_is_refused(trained_run, field):
    raw = read_manifest(trained_run).model_dump(mode="json", by_alias=True)
    del raw[field]
    with pytest.raises(CorruptModelError, match=field if field != "format" else "format"):
        parse_manifest(raw, "manifest.json")


def test_legacy_forms_still_read(trained_run):
    raw = read_manifest(trained_run).model_dump(mode="json", by_alias=True)
    del raw["model_type"]
    raw["kind"] = "retrieval"  # models saved before `model_type`
    assert parse_manifest(raw, "m").model_type == "retrieval"
    raw["tables"] = {
        name: {**entry, "config": {**entry["config"], "name": name}}  # TableConfig had a name
        for name, entry in raw["tables"].items()
    }
    del raw["input_kinds"]  # written before input kinds were recorded: the schema's are used
    parsed = parse_manifest(raw, "m")
    assert parsed.input_kinds == {} and set(parsed.tables) == set(raw["tables"])
