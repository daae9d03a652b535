"""Training-time crops and augmentations: MONAI dictionary transforms, image and label in sync.

A sample is {"image": (C, H, W) float32, "label": (1, H, W) float32}. Validation and
inference use none of these: they see whole, unaugmented slices.
"""

from __future__ import annotations

import math

import numpy as np
from monai.transforms import (
    Compose,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    RandZoomd,
)

from .config import AugmentConfig

KEYS = ("image", "label")


def augmentations(cfg: AugmentConfig) -> Compose:
    """Flips, 90-degree turns, small rotations, zoom and intensity changes (each with a probability)."""
    r, s = cfg.intensity_range, cfg.scale_range
    return Compose([
        RandFlipd(KEYS, prob=cfg.flip, spatial_axis=1),
        RandRotate90d(KEYS, prob=cfg.rotate90, max_k=3),
        RandRotated(KEYS, range_x=math.radians(cfg.rotate_degrees), prob=cfg.rotate,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandZoomd(KEYS, prob=cfg.scale, min_zoom=1 - s, max_zoom=1 + s,
                  mode=("bilinear", "nearest"), padding_mode="constant"),
        RandScaleIntensityd("image", factors=r, prob=cfg.intensity),
        RandShiftIntensityd("image", offsets=r, prob=cfg.intensity),
    ])


def crop_transforms(crop: int) -> tuple[RandCropByPosNegLabeld, RandSpatialCropd] | None:
    """(crop centred on a tumour pixel, crop anywhere); None when training on whole slices."""
    if crop <= 0:
        return None
    return (RandCropByPosNegLabeld(KEYS, label_key="label", spatial_size=(crop, crop),
                                   pos=1.0, neg=0.0, num_samples=1),
            RandSpatialCropd(KEYS, roi_size=(crop, crop), random_size=False))


def augment_sample(sample: dict, crops, augment: Compose, on_tumour: bool, seed: int) -> dict:
    """Crop (near tumour when `on_tumour`) and augment one sample, reproducibly for `seed`."""
    if crops is not None:
        crop = crops[0] if on_tumour else crops[1]
        crop.set_random_state(seed=seed)
        sample = crop(sample)
        if isinstance(sample, list):  # RandCropByPosNegLabeld returns num_samples crops
            sample = sample[0]
    augment.set_random_state(seed=(seed + 1) % 2**32)
    out = augment(sample)
    return {k: np.asarray(out[k], dtype=np.float32) for k in KEYS}
