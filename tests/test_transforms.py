"""Training-time transforms: the missing-sequence simulation and image/label sync."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gliomaseg.config import AugmentConfig
from gliomaseg.transforms import augment_sample, augmentations, fill_missing_sequences


def sample_25d(rng: np.random.Generator) -> np.ndarray:
    """A 2.5D sample: 3 slices x (pre-contrast, FLAIR, post-contrast), all channels distinct."""
    return rng.normal(size=(9, 8, 8)).astype(np.float32)


def test_missing_sequence_copies_flair_over_the_same_channels_of_every_slice():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        image = sample_25d(rng)
        out = fill_missing_sequences(image, 1.0, rng).reshape(3, 3, 8, 8)
        before = image.reshape(3, 3, 8, 8)
        np.testing.assert_array_equal(out[:, 1], before[:, 1])  # FLAIR itself never changes
        pre, post = (np.array_equal(out[:, c], before[:, 1]) for c in (0, 2))
        assert pre or post
        for c, replaced in ((0, pre), (2, post)):  # each slice alike
            expected = before[:, 1] if replaced else before[:, c]
            np.testing.assert_array_equal(out[:, c], expected)
        seen.add((pre, post))
    assert seen == {(True, False), (False, True), (True, True)}


@pytest.mark.parametrize("shape", [(9, 8, 8), (3, 8, 8), (5, 8, 8)])
def test_missing_sequence_off_or_not_rgb_leaves_the_sample_alone(shape):
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(fill_missing_sequences(image, 0.0, rng), image)
    if shape[0] % 3:  # FLAIR-only input: nothing to replace
        np.testing.assert_array_equal(fill_missing_sequences(image, 1.0, rng), image)


def test_missing_sequence_rate_follows_p():
    rng = np.random.default_rng(2)
    image = sample_25d(rng)
    changed = sum(not np.array_equal(fill_missing_sequences(image, 0.25, rng), image)
                  for _ in range(2000))
    assert 400 < changed < 600


def test_augmentations_move_image_and_label_together():
    """A label painted from the image stays equal to the transformed image's mark."""
    image = np.zeros((3, 32, 32), dtype=np.float32)
    image[:, 4:12, 6:20] = 1.0
    sample = {"image": image, "label": image[:1].copy()}
    strong = AugmentConfig(flip=0.5, rotate90=0.75, rotate=0.0, scale=0.0, intensity=0.0)
    for seed in range(8):
        out = augment_sample(dict(sample), None, augmentations(strong), False, seed)
        np.testing.assert_array_equal(out["image"][0] > 0.5, out["label"][0] > 0.5)


def test_gamma_changes_contrast_but_keeps_order_mean_and_std():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(5, 16, 16)).astype(np.float32)
    sample = {"image": image, "label": (image[:1] > 1).astype(np.float32)}
    cfg = AugmentConfig(flip=0, rotate90=0, rotate=0, scale=0, intensity=0, gamma=1.0,
                        gamma_range=(0.5, 0.6))
    out = augment_sample(dict(sample), None, augmentations(cfg), False, seed=0)["image"]
    assert not np.allclose(out, image, atol=1e-3)
    by_input = out.ravel()[np.argsort(image, axis=None)]
    assert np.all(np.diff(by_input) >= -1e-6)  # a monotone map: brighter stays brighter
    assert abs(out.mean() - image.mean()) < 1e-4 and abs(out.std() - image.std()) < 1e-4


NO_SPATIAL = dict(flip=0, rotate90=0, rotate=0, scale=0, intensity=0)


def total_variation(image: np.ndarray) -> float:
    return float(np.abs(np.diff(image, axis=-1)).sum() + np.abs(np.diff(image, axis=-2)).sum())


@pytest.mark.parametrize("kind", ["noise", "blur", "low_resolution"])
def test_nnunet_intensity_augmentations_change_the_image_not_the_label(kind):
    """Noise roughens the image; blur and low resolution smooth it; the label never moves."""
    rng = np.random.default_rng(4)
    image = np.zeros((3, 32, 32), dtype=np.float32)
    image[:, 8:24, 8:24] = rng.normal(2.0, 1.0, size=(3, 16, 16))
    sample = {"image": image, "label": (image[:1] > 2).astype(np.float32)}
    cfg = AugmentConfig(**NO_SPATIAL, **{kind: 1.0})
    out = augment_sample(dict(sample), None, augmentations(cfg), False, seed=1)
    np.testing.assert_array_equal(out["label"], sample["label"])
    assert out["image"].shape == image.shape and not np.allclose(out["image"], image, atol=1e-3)
    rougher = total_variation(out["image"]) > total_variation(image)
    assert rougher == (kind == "noise")
    if kind == "noise":  # zero-mean, and its std never above noise_std
        assert (out["image"] - image).std() <= cfg.noise_std


@pytest.mark.parametrize("kind", ["gamma", "noise", "blur", "low_resolution"])
def test_intensity_augmentations_leave_the_spatial_draws_alone(kind):
    """Each off or on, the same seed flips and turns the sample the same way."""
    image = np.zeros((3, 32, 32), dtype=np.float32)
    image[:, 4:12, 6:20] = 1.0
    sample = {"image": image, "label": image[:1].copy()}
    off = AugmentConfig(flip=0.5, rotate90=0.75, rotate=0.0, scale=0.0, intensity=0.0)
    on = dataclasses.replace(off, **{kind: 1.0})
    labels = [[augment_sample(dict(sample), None, augmentations(c), False, seed)["label"]
               for c in (off, on)] for seed in range(8)]
    for a, b in labels:
        np.testing.assert_array_equal(a, b)
    assert len({a.tobytes() for a, _ in labels}) > 1  # the seeds did move the sample
