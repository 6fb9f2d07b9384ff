"""Versioned folders: the newest complete version is read, an unreadable one is passed over
with a report, and a folder whose versions all fail is an error — never an empty start."""

import pytest
import torch

from streamrec.store import CorruptModelError, find_model_dir, read_manifest, verify
from streamrec.store.model_dir import find_deltas_dir, write_model_dir
from streamrec.store.versions import list_versions, load_newest, version_path, write_version

from .manifests import model_manifest


def _write(root, generation: int):
    return write_version(
        root,
        lambda path: write_model_dir(
            path,
            model_manifest(generation=generation),
            {"t.safetensors": {"x": torch.ones(4) * generation}},
        ),
    )


def test_versions_are_numbered_on_and_only_the_newest_two_kept(tmp_path):
    root = tmp_path / "checkpoint"
    for g in range(1, 6):
        _write(root, g)
    assert list_versions(root) == [4, 5]
    (root / ".000000000006.tmp-1-2").mkdir()  # a write in progress is not a version
    assert read_manifest(find_model_dir(tmp_path)).generation == 5
    assert find_model_dir(root) == version_path(root, 5)
    assert find_deltas_dir(tmp_path) == tmp_path / "deltas"


def test_an_unreadable_newest_version_falls_back_to_the_previous(tmp_path):
    root = tmp_path / "checkpoint"
    _write(root, 1)
    newest = _write(root, 2)
    (newest / "t.safetensors").write_bytes(b"flipped")
    loaded = load_newest(root, verify)
    assert loaded.generation == 1


def test_a_folder_of_versions_none_readable_is_an_error(tmp_path):
    root = tmp_path / "checkpoint"
    for g in (1, 2):
        (_write(root, g) / "t.safetensors").write_bytes(b"flipped")
    with pytest.raises(CorruptModelError, match="no version here can be read"):
        load_newest(root, verify)
    assert load_newest(tmp_path / "empty", verify) is None
