import numpy as np

from gliomaseg.config import DataConfig
from gliomaseg.data import read_patient
from gliomaseg.preprocess import (
    brain_mask,
    cache_dir,
    cached_volume,
    normalize,
    prepare_mask,
    prepare_volume,
    select_channels,
    stack_context,
)


def volume(seed=0, s=5, size=32):
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 200, (s, size, size, 3)).astype(np.uint8)
    img[:, :4] = 0  # black background rows
    return img


def test_flair_only_selects_the_second_channel():
    img = volume()
    x = select_channels(img, "flair")
    assert x.shape == (5, 1, 32, 32)
    np.testing.assert_array_equal(x[:, 0], img[..., 1])


def test_normalisation_is_z_score_over_the_brain():
    img = volume()
    x = normalize(select_channels(img, "rgb"), brain_mask(img), (0.5, 99.5))
    brain = brain_mask(img)
    for c in range(3):
        assert abs(x[:, c][brain].mean()) < 1e-4
        assert abs(x[:, c][brain].std() - 1) < 1e-3
        assert (x[:, c][~brain] < x[:, c][brain].min()).all()  # background below all brain


def test_normalisation_ignores_outliers_by_clipping():
    img = volume()
    img[0, 10, 10] = 255
    x = normalize(select_channels(img, "rgb"), brain_mask(img), (1.0, 99.0))
    assert x.max() < 3.0


def test_black_volume_does_not_divide_by_zero():
    img = np.zeros((2, 16, 16, 3), np.uint8)
    assert np.isfinite(prepare_volume(img, DataConfig(size=16))).all()


def test_resize_and_context_shapes():
    img = volume(size=48)
    x = prepare_volume(img, DataConfig(size=32, context=1, channels="rgb"))
    assert x.shape == (5, 9, 32, 32) and x.dtype == np.float32
    assert prepare_mask(np.ones((5, 48, 48), np.uint8), 32).shape == (5, 1, 32, 32)


def test_context_stacks_neighbours_and_repeats_edges():
    v = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 1, 2, 2), np.float32)
    s = stack_context(v, 1)
    assert s.shape == (4, 3, 2, 2)
    assert s[0, :, 0, 0].tolist() == [0, 0, 1]  # edge repeated
    assert s[2, :, 0, 0].tolist() == [1, 2, 3]
    assert s[3, :, 0, 0].tolist() == [2, 3, 3]


def test_cache_returns_identical_data_and_is_keyed_by_config(synth_root):
    p = read_patient(next(synth_root.glob("TCGA_*")))
    cfg = DataConfig(size=64, channels="rgb")
    first = cached_volume(p, cfg)
    files = list((cache_dir() / "preprocessed").rglob("*.npy"))
    second = cached_volume(p, cfg)
    assert isinstance(second, np.memmap)  # read back memory-mapped
    np.testing.assert_array_equal(first, second)
    cached_volume(p, DataConfig(size=64, channels="flair"))
    assert len(list((cache_dir() / "preprocessed").rglob("*.npy"))) == len(files) + 1
    cached_volume(p, DataConfig(size=64, context=2, channels="rgb"))  # context: stacked later
    assert len(list((cache_dir() / "preprocessed").rglob("*.npy"))) == len(files) + 1
