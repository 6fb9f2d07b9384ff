"""Delta directories and the manifests' refusal paths: a field a reader needs that is missing or
wrong is refused with its name, on write and on read; the legacy forms still read."""

from __future__ import annotations

import json

import pytest
import torch

from streamrec.store import CorruptModelError, read_manifest, write_model_dir
from streamrec.store.delta import DeltaDir, TableDelta, list_deltas, write_delta
from streamrec.store.manifest import DeltaProgress
from tests.store.manifests import model_manifest


def _delta(tmp_path, version=1, progress=None, dense=True):
    rows = TableDelta(
        torch.tensor([3, 9]), torch.ones(2, 4), torch.tensor([5]), None, None
    )
    return write_delta(
        tmp_path, version, {"item_id": rows}, {"w": torch.zeros(2)} if dense else None,
        base_model_version=7, precision="fp32", full=False, progress=progress,
    )


def test_a_delta_round_trips_through_its_typed_parts(tmp_path):
    progress = DeltaProgress(
        offsets={"next": 120}, events_trained=120, checkpoint_version=2,
        consumed_at=[10.0, 11.5], health=[{"rule": "nan_loss", "message": "x"}],
    )
    _delta(tmp_path, 1, progress)
    _delta(tmp_path, 2, dense=False)
    assert list_deltas(tmp_path) == [1, 2]
    first = DeltaDir.open(tmp_path, 1)
    m = first.manifest
    assert (m.version, m.base_model_version, m.precision, m.full) == (1, 7, "fp32", False)
    assert (m.offsets, m.events_trained, m.checkpoint_version) == ({"next": 120}, 120, 2)
    assert m.consumed_at == [10.0, 11.5] and m.health[0]["rule"] == "nan_loss"
    assert m.model_extra == {}  # every key written is declared
    delta = first.read()
    assert delta.tables["item_id"].fids.tolist() == [3, 9]
    assert delta.tables["item_id"].deleted.tolist() == [5]
    assert delta.dense is not None and delta.dense["w"].shape == (2,)
    second = DeltaDir.open(tmp_path, 2)
    assert second.manifest.consumed_at is None and second.manifest.checkpoint_version == 0
    assert second.read().dense is None


def test_a_trainer_cannot_put_an_undeclared_key_in_a_delta():
    with pytest.raises(ValueError, match="consumed"):
        DeltaProgress(consumed=[1.0])  # misspelt: refused, not written and ignored


def test_non_finite_rows_refuse_the_whole_delta(tmp_path):
    rows = TableDelta(torch.tensor([1, 2]), torch.tensor([[1.0], [float("nan")]]),
                      torch.empty(0, dtype=torch.int64))
    write_delta(tmp_path, 1, {"t": rows}, None, base_model_version=1, precision="fp32",
                full=False)
    directory = DeltaDir.open(tmp_path, 1)  # the manifest is fine
    with pytest.raises(CorruptModelError, match="1 rows hold NaN or inf .first fid 2"):
        directory.read()


@pytest.mark.parametrize(
    "field", ["format_version", "version", "created", "precision", "tables", "files"]
)
def test_a_delta_missing_a_required_field_is_refused_naming_it(tmp_path, field):
    path = _delta(tmp_path)
    raw = json.loads((path / "manifest.json").read_text())
    del raw[field]
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CorruptModelError, match=field):
        DeltaDir.open(tmp_path, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", 0), ("precision", "fp8"), ("events_trained", -1), ("tables", {"t": {}})],
)
def test_a_delta_field_of_the_wrong_shape_is_refused_naming_it(tmp_path, field, value):
    path = _delta(tmp_path)
    raw = json.loads((path / "manifest.json").read_text())
    raw[field] = value
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CorruptModelError, match=f"malformed manifest .*{field}"):
        DeltaDir.open(tmp_path, 1)


@pytest.mark.parametrize(
    "field", ["format_version", "created", "model_version", "config", "schema", "tables", "files"]
)
def test_a_model_missing_a_required_field_is_refused_naming_it(tmp_path, field):
    model = write_model_dir(tmp_path / "m", model_manifest(), {"t.pt": {"x": torch.ones(2)}})
    raw = json.loads((model / "manifest.json").read_text())
    del raw[field]
    (model / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CorruptModelError, match=field):
        read_manifest(model)


def test_the_legacy_forms_still_read(tmp_path):
    """`kind` before `model_type`; a table config that also stored the table's name."""
    table = {"file": "t.pt", "rows": 2, "dim": 4, "version": 1,
             "config": {"name": "item_id", "dim": 4}}
    model = write_model_dir(
        tmp_path / "m", model_manifest(tables={"item_id": table}), {"t.pt": {"x": torch.ones(2)}}
    )
    raw = json.loads((model / "manifest.json").read_text())
    raw.pop("model_type", None)
    raw["kind"] = "retrieval"
    raw["tables"]["item_id"]["config"]["name"] = "item_id"
    (model / "manifest.json").write_text(json.dumps(raw))
    manifest = read_manifest(model)
    assert manifest.is_retrieval
    assert manifest.tables["item_id"].config.dim == 4


def test_a_delta_whose_counts_do_not_fit_its_rows_is_refused(tmp_path):
    from streamrec.store.delta import read_delta

    rows = TableDelta(torch.tensor([1, 2]), torch.ones(2, 4), torch.empty(0, dtype=torch.int64),
                      counts=torch.tensor([3], dtype=torch.int32))
    write_delta(tmp_path, 1, {"t": rows}, None, base_model_version=1, precision="fp32",
                full=False)
    with pytest.raises(CorruptModelError, match="counts"):
        read_delta(tmp_path, 1)
    good = TableDelta(torch.tensor([1, 2]), torch.ones(2, 4), torch.empty(0, dtype=torch.int64),
                      counts=torch.tensor([3, 0], dtype=torch.int32))
    write_delta(tmp_path, 2, {"t": good}, None, base_model_version=1, precision="fp32",
                full=False)
    assert read_delta(tmp_path, 2).tables["t"].counts.tolist() == [3, 0]
