"""Checkpoints: written atomically, always carrying the full config they were trained with.

A checkpoint is a dict saved with torch.save: {"model": state_dict, "config": dict,
"format": 1, ...} plus, for training checkpoints, optimiser, epoch,
RNG states and the best metric (see docs/formats.md). Loading never unpickles
arbitrary objects (weights_only=True).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .model import build_model

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


def flush_denormals(t: torch.Tensor) -> torch.Tensor:
    """`t` with its denormal values (below the smallest normal float) set to zero.

    An fp32 training run's checkpoint can hold many (train.py flushes them while training),
    and an x86 CPU computes a network with them about 5x slower; zero changes no output.
    """
    return torch.where(t.abs() < torch.finfo(t.dtype).tiny, torch.zeros_like(t), t)


def model_from_checkpoint(state: dict[str, Any]) -> tuple[nn.Module, Config]:
    """Rebuild the network from the saved config, load weights (fp16 storage is upcast,
    denormals flushed to zero), eval mode."""
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg.data.in_channels, cfg.model)
    weights = {k: flush_denormals(v.float()) if v.is_floating_point() else v
               for k, v in state["model"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError("checkpoint weights do not fit the network of its config") from None
    return model.eval(), cfg


def bundle(sources: list[Path], dst: Path, post: dict | None = None, fp16: bool = True) -> dict:
    """Make a shippable model file from one training checkpoint, or an ensemble of several.

    Keeps weights, config and provenance (epochs, best validation PV-DSC, the training
    and validation patients of each run's run.json); drops optimiser and RNG state.
    Several checkpoints (e.g. the best.pt of each cross-validation fold) must share their
    data and model settings; they become the members of one `model.Ensemble`. `post`
    overrides the post-processing settings; `fp16` halves the size (upcast on load).
    """
    if not sources:
        raise CheckpointError("bundle needs at least one checkpoint")
    states = [load_checkpoint(src) for src in sources]
    cfgs = [Config.from_dict(state["config"]) for state in states]
    for src, cfg in zip(sources, cfgs, strict=True):
        if cfg.model.members != 1:
            raise CheckpointError(f"{src}: already an ensemble; bundle the runs it was made of")
        if (cfg.data, cfg.model) != (cfgs[0].data, cfgs[0].model):
            raise CheckpointError(f"{src}: data or model settings differ from {sources[0]}; "
                                  "ensemble members must be one network shape")
    cfg = cfgs[0].replace(model={"members": len(states)}, post=post or {})
    weights = {(k if len(states) == 1 else f"members.{i}.{k}"):
               v.half() if fp16 and v.is_floating_point() else v
               for i, state in enumerate(states) for k, v in state["model"].items()}
    provenance = [_provenance(src, state) for src, state in zip(sources, states, strict=True)]
    out = {"model": weights, "config": cfg.to_dict(), "members": provenance,
           "train_cases": sorted({c for p in provenance for c in p.get("train_cases", [])}),
           "val_cases": sorted({c for p in provenance for c in p.get("val_cases", [])})}
    if len(states) == 1:
        out.update({k: provenance[0][k] for k in ("epoch", "best_dice", "best_epoch")
                    if k in provenance[0]})
    model_from_checkpoint(out)  # the joined weights must load before anything is written
    save_checkpoint(dst, out)
    return out


def member_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Split an ensemble (`bundle` of several runs) back into one state per network.

    Each keeps its own weights, the shared config with `model.members` 1, and its run's
    provenance (`val_cases`, `train_cases`, epochs), so a bundle of cross-validation folds
    can be cross-validated again from the shipped file (`evaluate.member_models`).
    """
    cfg = Config.from_dict(state["config"])
    members = state.get("members") or []
    if cfg.model.members < 2 or len(members) != cfg.model.members:
        raise CheckpointError("not an ensemble of bundled runs: it records no member networks")
    single = cfg.replace(model={"members": 1}).to_dict()
    out = []
    for i, info in enumerate(members):
        prefix = f"members.{i}."
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        out.append({**info, "model": weights, "config": single})
    return out


def _provenance(src: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Where a bundled network came from: its run's epochs, scores and patients (from the
    run.json beside a training checkpoint, else as recorded in a bundle of one run)."""
    keys = ("epoch", "best_dice", "best_epoch", "train_cases", "val_cases")
    info = {"source": Path(src).name, **{k: state[k] for k in keys if k in state}}
    try:
        run = json.loads(Path(src).with_name("run.json").read_text())
        info.update(train_cases=list(run["train"]), val_cases=list(run["val"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a bare checkpoint: provenance is best effort
    return info
