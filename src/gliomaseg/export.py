"""Export a checkpoint to one self-contained ONNX file plus model.json, and optional int8.

The .onnx holds only the network: (N, C, size, size) float32 prepared slices ->
(N, 1, size, size) logits, N dynamic. Everything around it (channel selection,
normalisation, resizing, 2.5D stacking, threshold, post-processing) is described
by the full config in model.json and applied by the same code for both backends
(`inference.Segmenter`), so ONNX and PyTorch predictions cannot drift apart.
Formats: docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from . import __version__, metrics
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .config import CHANNEL_NAMES, Config, DataConfig
from .data import Patient
from .inference import Segmenter, onnx_logits_fn, onnx_metadata_path, read_onnx_metadata
from .preprocess import prepare_volume

FORMAT = 1
OPSET = 20  # pinned, so that an export does not change with the torch version
INPUT_NAME, OUTPUT_NAME = "image", "logits"
INT8_MAX_DROP = 0.005  # int8 is accepted when its PV-DSC is at most 0.5 points below fp32
DATASET = "LGG MRI Segmentation (Kaggle kaggle_3m, TCGA lower-grade glioma, FLAIR masks)"


def channel_names(cfg: DataConfig) -> list[str]:
    """Input channel names in model order; 2.5D neighbours are suffixed with their offset.

    Order follows preprocess.stack_context: offset-major (-k..+k), channel-minor.
    """
    names = list(CHANNEL_NAMES) if cfg.channels == "rgb" else [CHANNEL_NAMES[1]]
    if cfg.context == 0:
        return names
    return [f"{n}[{o:+d}]" for o in range(-cfg.context, cfg.context + 1) for n in names]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_network(model: torch.nn.Module, cfg: Config, out: Path) -> None:
    """Write the eval-mode network as one .onnx file (weights inside, no external data).

    Batch size is dynamic; height and width are fixed at cfg.data.size, which lets
    ONNX Runtime plan memory and pick kernels once (inputs are always resized to it).
    Written to a temporary name and renamed, so a failed export leaves nothing behind.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    example = torch.zeros(2, cfg.data.in_channels, cfg.data.size, cfg.data.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    try:
        # The exporter prints progress and warns about torchvision ops this model never uses.
        onnx_log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), redirect_stdout(StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(tmp), dynamo=True,
                              external_data=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}},
                              opset_version=OPSET)
        tmp.replace(out)
    finally:
        onnx_log.setLevel(level)
        tmp.unlink(missing_ok=True)


def training_info(checkpoint: Path, state: dict) -> dict:
    """What the model was trained on: from the checkpoint and the run's run.json if present."""
    info = {"dataset": DATASET, "epoch": state.get("epoch"),
            "best_val_pv_dsc": state.get("best_dice"), "val_cases": state.get("val_cases"),
            "train_cases": state.get("train_cases"), "members": state.get("members")}
    run_json = Path(checkpoint).with_name("run.json")
    if run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
            info["train_cases"] = run.get("train")
            info["val_cases"] = run.get("val", info["val_cases"])
        except (OSError, json.JSONDecodeError):
            pass  # provenance is best effort; the weights are what matter
    return info


def metadata(cfg: Config, onnx_path: Path, source: dict, training: dict,
             precision: str = "fp32", extra: dict | None = None) -> dict:
    """The content of model.json: everything needed to use the .onnx file correctly."""
    size, c = cfg.data.size, cfg.data.in_channels
    return {
        "format": FORMAT,
        "gliomaseg_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "onnx_file": onnx_path.name,
        "onnx_sha256": sha256(onnx_path),
        "opset": OPSET,
        "precision": precision,
        "input": {"name": INPUT_NAME, "shape": ["batch", c, size, size], "dtype": "float32",
                  "layout": "NCHW", "channels": channel_names(cfg.data)},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 1, size, size], "dtype": "float32",
                   "meaning": "logits; probability = sigmoid(logits)"},
        "preprocessing": {
            "function": "gliomaseg.preprocess.prepare_volume",
            "steps": [f"select channels: {cfg.data.channels}",
                      "per volume and channel: clip brain voxels (any channel > 10) to "
                      f"percentiles {list(cfg.data.clip_percentiles)}, z-score over the brain, "
                      "background 0 before the shift",
                      f"resize to {size}x{size} (bilinear, antialiased when shrinking)",
                      f"stack {cfg.data.context} neighbouring slice(s) on each side (edge repeat)"],
        },
        "postprocessing": {
            "function": "gliomaseg.inference.segment",
            "steps": ["sigmoid", "resize probabilities bilinearly to the native slice grid",
                      f"threshold >= {cfg.post.threshold}",
                      "3D components (26-connected): min_size, largest_component (largest by "
                      f"{cfg.post.largest_by}), fill_holes"],
            **dataclasses.asdict(cfg.post),
        },
        "threshold": cfg.post.threshold,
        "source": source,
        "training": training,
        "config": cfg.to_dict(),
        **(extra or {}),
    }


def write_metadata(onnx_path: Path, meta: dict) -> Path:
    path = onnx_metadata_path(onnx_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)
    return path


def export_checkpoint(checkpoint: Path, out: Path) -> dict:
    """Checkpoint -> OUT (.onnx) and OUT's model.json; returns the metadata."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise CheckpointError(f"{out}: the exported file must end in .onnx")
    state = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_network(model, cfg, out)
    source = {"checkpoint": Path(checkpoint).name, "checkpoint_sha256": sha256(checkpoint),
              "torch_version": torch.__version__}
    meta = metadata(cfg, out, source, training_info(checkpoint, state))
    write_metadata(out, meta)
    return meta


def exported_once(checkpoint: Path, folder: Path) -> Path:
    """CHECKPOINT exported to FOLDER/<stem>-<sha256 prefix>.onnx on first use, reused after.

    Named by the weights' hash, so new weights get a new file and a stale export is never
    used. Both files are written atomically, so concurrent first uses cannot see a half file.
    """
    out = Path(folder) / f"{Path(checkpoint).stem}-{sha256(checkpoint)[:12]}.onnx"
    if not (out.is_file() and onnx_metadata_path(out).is_file()):
        export_checkpoint(checkpoint, out)
    return out


# --- int8 --------------------------------------------------------------------------------------

def calibration_batches(patients: list[Patient], cfg: DataConfig, max_slices: int = 256,
                        batch_size: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Prepared slices for calibration: an even sample over all patients' slices, in batches.

    Preprocessing is per volume, so whole patients are prepared and slices picked after.
    """
    slices = [x for p in patients for x in prepare_volume(p.image, cfg)]
    if len(slices) > max_slices:
        keep = np.random.default_rng(seed).choice(len(slices), max_slices, replace=False)
        slices = [slices[i] for i in np.sort(keep)]
    stacked = np.stack(slices).astype(np.float32)
    return [stacked[i:i + batch_size] for i in range(0, len(stacked), batch_size)]


class _Reader(CalibrationDataReader):
    """Feeds prepared batches to onnxruntime's calibrator."""

    def __init__(self, batches: list[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, out: Path, batches: list[np.ndarray]) -> None:
    """Static int8 (QDQ, per-channel weights, uint8 activations) with MinMax calibration.

    uint8 activations with int8 weights (U8S8) are the fast path of ONNX Runtime's
    x86 kernels (VNNI). The graph is shape-inferred and optimised first, as the
    onnxruntime docs recommend, so Conv+BN are folded before quantisation.
    """
    prep = out.with_name(f".{out.name}.prep.onnx")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        quant_pre_process(str(fp32_path), str(prep))
        quantize_static(str(prep), str(tmp), _Reader(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        tmp.replace(out)
    finally:
        prep.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def mean_pv_dsc(model: Segmenter, patients: list[Patient]) -> float:
    """Mean per-patient Dice (all slices pooled, native grid); patients without tumour in
    both truth and prediction are left out (NaN), as in metrics.py."""
    scores = [metrics.dice(metrics.confusion(model.predict(p.image).mask, p.mask))
              for p in patients]
    valid = [s for s in scores if not math.isnan(s)]
    return float(np.mean(valid)) if valid else math.nan


@dataclass
class Int8Report:
    fp32_dice: float
    int8_dice: float
    accepted: bool
    path: Path | None  # the int8 model when accepted, else None (and no file left)
    patients: int
    slices: int


def int8_path(fp32_path: Path) -> Path:
    """model.onnx -> model.int8.onnx (its metadata: model.int8.json)."""
    return Path(fp32_path).with_suffix(".int8.onnx")


def export_int8(fp32_path: Path, patients: list[Patient], max_drop: float = INT8_MAX_DROP,
                max_slices: int = 256) -> Int8Report:
    """Quantise an exported fp32 model with calibration on `patients` (who need masks) and
    keep it only if its mean PV-DSC on them is at most `max_drop` below fp32's.

    The comparison runs both models through the same Segmenter pipeline with the
    model's own post-processing, so it measures what a user would see.
    """
    if not patients or any(p.mask is None for p in patients):
        raise CheckpointError("int8 calibration needs patients with masks (for the PV-DSC check)")
    fp32_path = Path(fp32_path)
    meta = read_onnx_metadata(fp32_path)
    cfg = Config.from_dict(meta["config"])
    out = int8_path(fp32_path)
    quantize_int8(fp32_path, out, calibration_batches(patients, cfg.data, max_slices))
    fp32 = Segmenter(cfg, "onnx", onnx_logits_fn(fp32_path), fp32_path)
    int8 = Segmenter(cfg, "onnx", onnx_logits_fn(out), out)
    d32, d8 = mean_pv_dsc(fp32, patients), mean_pv_dsc(int8, patients)
    accepted = not math.isnan(d8) and (math.isnan(d32) or d32 - d8 <= max_drop)
    n_slices = sum(p.num_slices for p in patients)
    if not accepted:
        out.unlink(missing_ok=True)
        return Int8Report(d32, d8, False, None, len(patients), n_slices)
    calibration = {"patients": [p.case for p in patients], "slices": n_slices,
                   "max_calibration_slices": max_slices, "method": "MinMax, QDQ U8S8 per-channel",
                   "fp32_pv_dsc": d32, "int8_pv_dsc": d8, "max_drop": max_drop}
    write_metadata(out, metadata(cfg, out, meta["source"], meta["training"], "int8",
                                 {"int8_calibration": calibration}))
    return Int8Report(d32, d8, True, out, len(patients), n_slices)
