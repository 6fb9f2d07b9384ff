"""Crash-safe writes: a writer killed with -9 at any instruction leaves the old directory or the
new one, never none and never half of one; leftovers are recognised and removed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from streamrec.store import CorruptModelError, read_manifest, read_tensors, verify, write_model_dir
from streamrec.store.atomic import recover_dir, remove_temporaries, replace_dir, write_atomic

from .manifests import model_manifest

WRITER = textwrap.dedent(
    """
    import sys, torch
    from streamrec.store import write_model_dir
    path, i = sys.argv[1], 0
    print("ready", flush=True)  # imports done: the kill lands among the replacements
    base = {"created": 0.0, "model_version": 1, "config": {}, "schema": {}, "tables": {}}
    while True:  # replace the directory again and again until killed
        i += 1
        write_model_dir(path, {**base, "generation": i},
                        {"t.safetensors": {"x": torch.full((20000,), float(i))}},
                        {"note.txt": str(i).encode()})
    """
)


@pytest.mark.slow
def test_kill_9_while_replacing_a_directory_leaves_a_complete_one(tmp_path):
    target = tmp_path / "model"
    zeros = {"t.safetensors": {"x": torch.zeros(20000)}}
    write_model_dir(target, model_manifest(generation=0), zeros)
    rng = np.random.default_rng(0)
    generations = set()
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"  # however long imports took
        time.sleep(float(rng.uniform(0.05, 0.6)))  # many replacements, killed inside one
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        recover_dir(target)  # what a run directory's start does (no-op with RENAME_EXCHANGE)
        manifest = verify(target)  # every file present and matching its checksum
        x = read_tensors(target, "t.safetensors", manifest)["x"]
        assert torch.all(x == manifest.generation)
        generations.add(manifest.generation)
        remove_temporaries(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert len(generations) > 5  # the kills landed at different moments


def test_replace_dir_without_exchange_is_recovered_after_a_kill_between_renames(tmp_path):
    """Where RENAME_EXCHANGE is missing the replacement is two renames; a kill between them
    leaves the old copy under a hidden name, and recover_dir puts it back."""
    target = tmp_path / "model"
    write_model_dir(target, model_manifest(generation=1), {"t.safetensors": {"x": torch.ones(3)}})
    aside = tmp_path / ".model.old-123-456"
    target.rename(aside)  # the first rename happened; the process died before the second
    recover_dir(target)
    assert read_manifest(target).generation == 1 and not aside.exists()


def test_replace_dir_swaps_in_the_new_directory(tmp_path):
    old, new = tmp_path / "d", tmp_path / ".d.tmp-1"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, old)
    assert (old / "a").read_text() == "new" and not new.exists()


def test_write_atomic_replaces_content_and_leaves_no_temporary(tmp_path):
    write_atomic(tmp_path / "status.json", "1")
    write_atomic(tmp_path / "status.json", b"2")
    assert (tmp_path / "status.json").read_text() == "2"
    assert os.listdir(tmp_path) == ["status.json"]


def test_remove_temporaries_removes_only_leftovers(tmp_path):
    (tmp_path / ".model.tmp-1-2").mkdir()
    (tmp_path / ".status.json.tmp-3-4").write_text("x")
    (tmp_path / ".model.old-5-6").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / ".lock").write_text("1")
    removed = remove_temporaries(tmp_path)
    assert len(removed) == 3
    assert sorted(os.listdir(tmp_path)) == [".lock", "model"]


def test_manifest_file_names_cannot_leave_their_folder(tmp_path):
    secret = tmp_path / "secret.safetensors"
    ones = {"x": torch.ones(2)}
    write_model_dir(tmp_path / "other", model_manifest(), {"s.safetensors": ones})
    (tmp_path / "other" / "s.safetensors").rename(secret)
    model = write_model_dir(tmp_path / "m", model_manifest(), {"t.safetensors": ones})
    manifest = read_manifest(model)
    for name in ("../secret.safetensors", str(secret), "t.safetensors/../../secret.safetensors"):
        manifest.files[name] = manifest.files["t.safetensors"]
        with pytest.raises(CorruptModelError, match="outside"):
            read_tensors(model, name, manifest)
    (model / "link.safetensors").symlink_to(secret)
    manifest.files["link.safetensors"] = manifest.files["t.safetensors"]
    with pytest.raises(CorruptModelError, match="outside"):
        read_tensors(model, "link.safetensors", manifest)
    with pytest.raises(CorruptModelError, match="not a relative path"):
        read_tensors(model, 7, manifest)


def test_a_manifest_that_drifted_is_refused_when_written_and_when_read(tmp_path):
    with pytest.raises(CorruptModelError, match="being written.*tables"):
        write_model_dir(tmp_path / "m", {**model_manifest(), "tables": {"t": {"rows": -1}}}, {})
    model = write_model_dir(tmp_path / "m", model_manifest(), {"t.pt": {"x": torch.ones(2)}})
    raw = json.loads((model / "manifest.json").read_text())
    raw["input_kinds"] = {"user_id": "integer"}  # not a kind any reader knows
    (model / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CorruptModelError, match="malformed manifest .*input_kinds.user_id"):
        read_manifest(model)
