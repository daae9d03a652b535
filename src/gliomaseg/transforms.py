"""Training-time crops and augmentations: MONAI dictionary transforms, image and label in sync.

A sample is {"image": (C, H, W) float32, "label": (1, H, W) float32}. Validation and
inference use none of these: they see whole, unaugmented slices.
"""

from __future__ import annotations

import math

import numpy as np
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    RandSpatialCropd,
    RandZoomd,
)

from .config import AugmentConfig

KEYS = ("image", "label")


def augmentations(cfg: AugmentConfig) -> Compose:
    """Flips, 90-degree turns, small rotations, zoom, intensity, gamma, noise, blur and
    low resolution (each with a probability; the last four are nnU-Net's, off by default).

    Later additions come last so that, when they are off, the other transforms draw the same
    random numbers as before they existed (Compose seeds its transforms in order). Blur and
    low resolution act on every channel at once, where nnU-Net picks each with p 0.5.
    """
    r, s, sigma = cfg.intensity_range, cfg.scale_range, cfg.blur_sigma
    return Compose([
        RandFlipd(KEYS, prob=cfg.flip, spatial_axis=1),
        RandRotate90d(KEYS, prob=cfg.rotate90, max_k=3),
        RandRotated(KEYS, range_x=math.radians(cfg.rotate_degrees), prob=cfg.rotate,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandZoomd(KEYS, prob=cfg.scale, min_zoom=1 - s, max_zoom=1 + s,
                  mode=("bilinear", "nearest"), padding_mode="constant"),
        RandScaleIntensityd("image", factors=r, prob=cfg.intensity),
        RandShiftIntensityd("image", offsets=r, prob=cfg.intensity),
        RandAdjustContrastd("image", prob=cfg.gamma, gamma=cfg.gamma_range, retain_stats=True),
        RandGaussianNoised("image", prob=cfg.noise, std=cfg.noise_std, sample_std=True),
        RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, prob=cfg.blur),
        RandSimulateLowResolutiond("image", prob=cfg.low_resolution, upsample_mode="bilinear",
                                   zoom_range=cfg.low_resolution_zoom),
    ])


def fill_missing_sequences(image: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """With probability p, copy FLAIR over pre-contrast, post-contrast or both (1/3 each).

    image: (3 * n, H, W), n slices of (pre-contrast, FLAIR, post-contrast), normalised.
    This is how the Kaggle dataset fills a missing sequence; normalisation is per channel,
    so copying the normalised FLAIR equals normalising a copied one. All n slices of a 2.5D
    sample change alike, since a missing sequence is missing from the whole volume.
    """
    if image.shape[0] % 3 or rng.random() >= p:
        return image
    which = rng.integers(3)  # 0: pre-contrast, 1: post-contrast, 2: both
    x = image.reshape(-1, 3, *image.shape[1:]).copy()
    if which in (0, 2):
        x[:, 0] = x[:, 1]
    if which in (1, 2):
        x[:, 2] = x[:, 1]
    return x.reshape(image.shape)


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
