"""Checkpoints: written atomically, always carrying the full config they were trained with.

A checkpoint is a dict saved with torch.save: {"model": state_dict, "config": dict,
"format": 1, ...} plus, for training checkpoints, optimiser, epoch,
RNG states and the best metric (see docs/formats.md). Loading never unpickles
arbitrary objects (weights_only=True).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .model import UNet, build_model

FORMAT = 1


class CheckpointError(ValueError):
    """A missing, corrupt or foreign checkpoint file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A run killed mid-write leaves the previous checkpoint intact, and its temporary file
    is removed by the next save of the same checkpoint (one writer per path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a gliomaseg checkpoint (no model/config)")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> tuple[UNet, Config]:
    """Rebuild the network from the saved config, load weights (fp16 storage is upcast), eval mode."""
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg.data.in_channels, cfg.model)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    return model.eval(), cfg


def bundle(src: Path, dst: Path, post: dict | None = None, fp16: bool = True) -> dict:
    """Make a shippable model file from a training checkpoint.

    Keeps weights, config and provenance (epoch, best validation PV-DSC, validation
    patients); drops optimiser and RNG state. `post` overrides post-processing settings
    chosen on validation patients; `fp16` halves the size (weights are upcast on load).
    """
    state = load_checkpoint(src)
    cfg = Config.from_dict(state["config"])
    if post:
        cfg = cfg.replace(post=post)
    weights = {k: v.half() if fp16 and v.is_floating_point() else v
               for k, v in state["model"].items()}
    keep = {k: state[k] for k in ("epoch", "best_dice", "best_epoch", "val_cases") if k in state}
    out = {"model": weights, "config": cfg.to_dict(), **keep}
    save_checkpoint(dst, out)
    return out
