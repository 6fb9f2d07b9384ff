"""ModelDir: a model directory found once, its manifest read once, every file read through it
checked against that manifest."""

import pytest
import torch

import streamrec.store.model_dir as model_dir_module
from streamrec.store import CorruptModelError, ModelDir, write_model_dir
from tests.store.manifests import model_manifest


def _run_with_model(tmp_path):
    run = tmp_path / "run"
    write_model_dir(run / "model", model_manifest(),
                    {"dense.safetensors": {"w": torch.arange(6.0).reshape(2, 3)}},
                    extra_files={"notes.txt": b"hello"})
    return run


def test_a_run_directory_is_resolved_once_and_its_manifest_read_once(tmp_path, monkeypatch):
    run = _run_with_model(tmp_path)
    reads = []
    real = model_dir_module.read_manifest_json
    monkeypatch.setattr(model_dir_module, "read_manifest_json",
                        lambda p, kind: reads.append(p) or real(p, kind))
    opened = ModelDir.open(run)
    assert opened.path == run / "model" and opened.manifest.model_version == 1
    assert torch.equal(opened.read_tensors("dense.safetensors")["w"][1], torch.tensor([3., 4, 5]))
    assert opened.read_file("notes.txt") == b"hello"
    assert opened.open_tensors("dense.safetensors").shape("w") == [2, 3]
    assert ModelDir.open(opened) is opened  # handing it on reads nothing again
    assert len(reads) == 1


def test_files_are_checked_against_the_manifest_it_was_opened_with(tmp_path):
    opened = ModelDir.open(_run_with_model(tmp_path))
    (opened.path / "notes.txt").write_bytes(b"hellO")
    with pytest.raises(CorruptModelError, match="checksum mismatch"):
        opened.read_file("notes.txt")
    with pytest.raises(CorruptModelError, match="not listed in the manifest"):
        opened.read_file("manifest.json")
    with pytest.raises(CorruptModelError, match="points outside"):
        opened.read_file("../elsewhere.txt")
    with pytest.raises(CorruptModelError, match="not a model directory"):
        ModelDir.open(tmp_path / "nothing")


def test_the_stamp_changes_when_the_directory_is_replaced(tmp_path):
    run = _run_with_model(tmp_path)
    before = ModelDir.open(run).stamp()
    assert ModelDir.open(run).stamp() == before
    write_model_dir(run / "model", model_manifest(model_version=2),
                    {"dense.safetensors": {"w": torch.zeros(1)}})
    assert ModelDir.open(run).stamp() != before
