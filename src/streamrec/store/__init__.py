"""The model-directory format shared by training (writer) and serving (reader)."""

from streamrec.store.model_dir import (
    CorruptModelError,
    ModelDir,
    find_deltas_dir,
    find_model_dir,
    read_manifest,
    read_tensors,
    verify,
    write_model_dir,
)

__all__ = [
    "CorruptModelError",
    "ModelDir",
    "find_deltas_dir",
    "find_model_dir",
    "read_manifest",
    "read_tensors",
    "verify",
    "write_model_dir",
]
