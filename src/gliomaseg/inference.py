"""Inferers: whole-slice probabilities, flip TTA and 3D post-processing for a patient volume.

Every path that turns an image into a mask (validation during training,
`evaluate`, `predict`, the web app) goes through `probabilities` and
`postprocess`, so they agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import FillHoles, KeepLargestConnectedComponent, RemoveSmallObjects

from .config import PostConfig

# logits_fn: (N, C, H, W) float32 array -> (N, 1, H, W) float32 logits array
LogitsFn = Callable[[np.ndarray], np.ndarray]


def torch_logits_fn(model: torch.nn.Module, bf16: bool = False,
                    channels_last: bool = False) -> LogitsFn:
    """Wrap an eval-mode PyTorch model as a LogitsFn (bf16 autocast on CPU when asked)."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(memory_format=fmt)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), ctx:
            return model(t).float().numpy()

    return run


def volume_logits(logits_fn: LogitsFn, x: np.ndarray, batch_size: int = 16,
                  tta: bool = False) -> np.ndarray:
    """Logits (S, H, W) of a prepared volume x (S, C, H, W), in batches of slices.

    With `tta`, the logits of the image and of its left-right flip are averaged
    (flipped back).
    """
    out = np.empty((x.shape[0], *x.shape[2:]), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        logits = logits_fn(batch)[:, 0]
        if tta:
            flipped = logits_fn(np.ascontiguousarray(batch[..., ::-1]))[:, 0, :, ::-1]
            logits = 0.5 * (logits + flipped)
        out[start:start + batch_size] = logits
    return out


def probabilities(logits_fn: LogitsFn, x: np.ndarray, batch_size: int = 16,
                  tta: bool = False) -> np.ndarray:
    """Sigmoid probabilities (S, H, W) of a prepared volume x (S, C, H, W)."""
    return sigmoid(volume_logits(logits_fn, x, batch_size, tta))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free form


def to_native(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (S, h, w) probabilities to the native slice grid (S, H, W), bilinearly.

    Metrics are computed on the native grid, so a model trained at another size is
    scored on the same pixels as the ground truth.
    """
    if probs.shape[1:] == tuple(shape):
        return probs
    t = torch.from_numpy(probs)[:, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[:, 0].numpy()


def postprocess(mask: np.ndarray, cfg: PostConfig) -> np.ndarray:
    """3D post-processing of a binary (S, H, W) patient mask, with MONAI's components.

    Components are 3D (26-connected across slices), so a tumour that spans slices is
    one object. Order: drop components below `min_size` voxels, keep the largest,
    fill holes.
    """
    m = torch.from_numpy(mask.astype(np.uint8))[None]  # (1, S, H, W): MONAI wants a channel
    if cfg.min_size > 0 and m.any():
        m = RemoveSmallObjects(min_size=cfg.min_size, connectivity=3)(m)
    if cfg.largest_component and m.any():
        m = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(m)
    if cfg.fill_holes and m.any():
        m = FillHoles(applied_labels=[1])(m)
    return np.asarray(m[0], dtype=np.uint8)


def segment(logits_fn: LogitsFn, x: np.ndarray, native_shape: tuple[int, int],
            post: PostConfig, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Prepared volume (S, C, h, w) -> (mask (S, H, W) uint8 {0,1}, probabilities (S, H, W))."""
    probs = to_native(probabilities(logits_fn, x, batch_size=batch_size, tta=post.tta),
                      native_shape)
    return postprocess(probs >= post.threshold, post), probs
