"""Training-time transforms: the missing-sequence simulation and image/label sync."""

from __future__ import annotations

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
