"""Training checkpoints: a model directory plus what is needed to resume exactly.

On top of the model (dense weights, every table with its optimizer state and metadata) a
checkpoint holds the dense optimizer's state (`optimizer.safetensors`, its non-tensor settings in
the manifest) and the trainer position: epoch, step within the epoch, global step, and the torch
RNG state. Resuming restores all of it, so the losses that follow equal an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from streamrec.config import JobConfig
from streamrec.models.base import RankingModel
from streamrec.models.persistence import load_model, save_model


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state_dict into named tensors + JSON-able settings."""
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], settings: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in settings.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    base_lrs = [group.get("base_lr") for group in opt.param_groups]
    opt.load_state_dict({"state": state, "param_groups": settings["param_groups"]})
    if len(base_lrs) == len(opt.param_groups):  # the rates come from today's config, not the
        for group, base_lr in zip(opt.param_groups, base_lrs, strict=True):  # checkpoint's
            if base_lr is not None:
                group["base_lr"] = base_lr


def save_checkpoint(
    path: str | Path,
    model: RankingModel,
    config: JobConfig,
    optimizer: torch.optim.Optimizer,
    position: dict[str, int],
    metrics: dict | None = None,
    extra_manifest: dict | None = None,
) -> Path:
    tensors, settings = optimizer_tensors(optimizer)
    tensors_files = {
        "optimizer.safetensors": tensors,
        "rng.safetensors": {"torch": torch.get_rng_state()},
    }
    manifest = {
        **(extra_manifest or {}),
        "trainer": {"position": position, "optimizer": settings},
        "metrics": metrics or {},
    }
    return save_model(path, model, config, manifest, tensors_files)


def load_checkpoint(
    path: str | Path, optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer]
) -> tuple:
    """→ (model, config, optimizer, position). `optimizer_factory(model)` builds an optimizer
    of the right kind, whose state is then restored."""
    loaded = load_model(path, storage="configured")  # a resuming trainer owns its folders
    model = loaded.model
    optimizer = optimizer_factory(model)
    trainer = loaded.manifest.trainer
    if trainer is None:
        raise ValueError(f"{path}: a model directory without trainer state cannot be resumed")
    restore_optimizer(
        optimizer,
        loaded.directory.read_tensors("optimizer.safetensors"),
        trainer.optimizer,
    )
    torch.set_rng_state(loaded.directory.read_tensors("rng.safetensors")["torch"])
    return model, loaded.config, optimizer, trainer.position
