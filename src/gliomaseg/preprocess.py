"""Turn a uint8 patient volume into the model's float input, the same way everywhere.

Training, evaluation, prediction, ONNX export and the web app all call
`prepare_volume`, so the pre-processing cannot drift between them. Steps, per
volume and per channel: select channels (all three, or FLAIR only), clip the
brain's intensities to percentiles and z-score them over the brain, resize to
the model grid, and stack 2.5D neighbours. Normalised volumes are cached on disk
(see `cache_dir`) keyed by a hash of the settings that change them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig, config_hash
from .data import Patient

BRAIN_THRESHOLD = 10  # uint8 level above which a pixel (any channel) counts as brain
FLAIR = 1  # index of FLAIR in the Kaggle RGB images


def select_channels(image: np.ndarray, channels: str) -> np.ndarray:
    """(S, H, W, 3) uint8 -> (S, C, H, W) float32; C = 3 for 'rgb', 1 for 'flair'."""
    picked = image[..., FLAIR:FLAIR + 1] if channels == "flair" else image
    return np.ascontiguousarray(picked.transpose(0, 3, 1, 2), dtype=np.float32)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """(S, H, W, 3) uint8 -> (S, H, W) bool: pixels brighter than background in any channel."""
    return image.max(axis=-1) > BRAIN_THRESHOLD


def normalize(volume: np.ndarray, brain: np.ndarray,
              percentiles: tuple[float, float]) -> np.ndarray:
    """Per channel: clip brain voxels to percentiles, then z-score over the brain.

    volume (S, C, H, W) float32, brain (S, H, W) bool. Background stays below the
    brain (it is 0 before the shift). Statistics come from the brain only, because
    the black background is 20-60% of a slice and would dominate them.
    """
    out = np.empty_like(volume)
    for c in range(volume.shape[1]):
        channel = volume[:, c]
        values = channel[brain]
        if values.size < 16:  # an empty or nearly black volume: nothing to normalise
            out[:, c] = 0.0
            continue
        lo, hi = np.percentile(values, percentiles)
        clipped = np.where(brain, np.clip(channel, lo, hi), 0.0)
        inside = clipped[brain]
        out[:, c] = (clipped - inside.mean()) / max(float(inside.std()), 1e-6)
    return out


def resize(volume: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """(S, C, H, W) -> (S, C, size, size); a no-op when already that size."""
    if volume.shape[-2:] == (size, size):
        return volume
    t = torch.from_numpy(np.ascontiguousarray(volume))
    if mode == "nearest":
        return F.interpolate(t.float(), size=(size, size), mode="nearest").to(t.dtype).numpy()
    return F.interpolate(t, size=(size, size), mode=mode, align_corners=False,
                         antialias=volume.shape[-1] > size).numpy()


def stack_context(volume: np.ndarray, k: int) -> np.ndarray:
    """2.5D input: (S, C, H, W) -> (S, C * (2k + 1), H, W), neighbours ordered from -k to +k.

    Slices beyond the ends repeat the edge slice, so every slice has a full stack.
    """
    if k == 0:
        return volume
    s = volume.shape[0]
    index = np.clip(np.arange(s)[:, None] + np.arange(-k, k + 1)[None, :], 0, s - 1)
    stacked = volume[index]  # (S, 2k+1, C, H, W)
    return stacked.reshape(s, -1, *volume.shape[2:])


def normalized_volume(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """(S, H, W, 3) uint8 -> (S, C, size, size) float32, before 2.5D stacking."""
    volume = normalize(select_channels(image, cfg.channels), brain_mask(image),
                       cfg.clip_percentiles)
    return resize(volume, cfg.size)


def prepare_volume(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """(S, H, W, 3) uint8 -> model input (S, cfg.in_channels, size, size) float32."""
    return stack_context(normalized_volume(image, cfg), cfg.context)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(S, H, W) {0,1} -> (S, 1, size, size) float32 (nearest-neighbour when resized)."""
    return resize(mask[:, None].astype(np.float32), size, mode="nearest")


def cache_dir() -> Path:
    """$GLIOMASEG_CACHE, else ~/.cache/gliomaseg. Delete the folder to clear the cache."""
    env = os.environ.get("GLIOMASEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gliomaseg"


def _cache_key(patient: Patient, cfg: DataConfig) -> str:
    # The 2.5D context is stacked after loading, so it does not change what is cached.
    settings = config_hash(DataConfig(channels=cfg.channels, size=cfg.size,
                                      clip_percentiles=cfg.clip_percentiles))
    stats = [p.stat() for p in patient.image_paths]
    stamp = f"{len(stats)}-{max(s.st_mtime_ns for s in stats)}-{sum(s.st_size for s in stats)}"
    return f"{settings}/{patient.case}-{stamp}.npy"


def cached_volume(patient: Patient, cfg: DataConfig, use_cache: bool = True) -> np.ndarray:
    """`normalized_volume` of a patient read from, or written to, the on-disk cache.

    The cache file is memory-mapped on later runs, so a second run starts fast.
    Files appear atomically (written to a temporary name, then renamed).
    """
    if not use_cache:
        return normalized_volume(patient.image, cfg)
    path = cache_dir() / "preprocessed" / _cache_key(patient, cfg)
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
    volume = normalized_volume(patient.image, cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, volume)
        tmp.replace(path)
    except OSError:
        pass  # a read-only or full cache only costs speed
    return volume
