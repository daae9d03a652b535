"""Public model API: load_model -> Segmenter.predict -> Prediction, and its input handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gliomaseg
from gliomaseg.checkpoint import CheckpointError
from gliomaseg.config import PostConfig
from gliomaseg.data import DataError, read_patient
from gliomaseg.inference import (
    as_volume,
    postprocess,
    segment,
    torch_logits_fn,
    use_bf16,
    volume_logits,
)
from gliomaseg.preprocess import prepare_volume


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return gliomaseg.load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def patient(synth_root):
    return read_patient(sorted(p for p in synth_root.iterdir() if p.is_dir())[0])


def test_predict_patient_shapes_and_types(model, patient):
    result = model.predict(patient)
    s, h, w = patient.image.shape[:3]
    assert result.mask.shape == (s, h, w) and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask).tolist()) <= {0, 1}
    assert result.probabilities.shape == (s, h, w)
    assert result.probabilities.dtype == np.float32
    assert result.probabilities.min() >= 0.0 and result.probabilities.max() <= 1.0
    assert result.seconds > 0
    assert model.backend == "torch" and model.cfg.data.size == 64


def test_predict_matches_segment_pipeline(model, tiny_checkpoint, patient):
    """predict is prepare_volume + segment, nothing else (no second preprocessing path)."""
    from gliomaseg.checkpoint import load_checkpoint, model_from_checkpoint

    net, cfg = model_from_checkpoint(load_checkpoint(tiny_checkpoint))
    x = prepare_volume(patient.image, cfg.data)
    mask, probs = segment(torch_logits_fn(net), x, patient.image.shape[1:3], cfg.post)
    result = model.predict(patient)
    np.testing.assert_array_equal(result.mask, mask)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-6)


def test_folder_path_array_and_patient_agree(model, patient):
    by_path = model.predict(patient.image_paths[0].parent)
    by_str = model.predict(str(patient.image_paths[0].parent))
    by_array = model.predict(patient.image)
    for other in (by_str, by_array):
        np.testing.assert_array_equal(by_path.mask, other.mask)
        np.testing.assert_array_equal(by_path.probabilities, other.probabilities)


def test_single_slice_inputs(model, patient):
    one = model.predict(patient.image[3])  # (H, W, 3)
    assert one.mask.shape == (1, *patient.image.shape[1:3])
    from_file = model.predict(patient.image_paths[3])
    np.testing.assert_array_equal(one.mask, from_file.mask)


def test_grayscale_volume_is_flair_everywhere():
    gray = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    rgb = as_volume(gray)
    assert rgb.shape == (2, 32, 32, 3)
    assert (rgb == gray[..., None]).all()


def test_non_uint8_is_scaled_by_maximum():
    vol = np.zeros((1, 16, 16, 3), dtype=np.uint16)
    vol[0, 0, 0] = 1000
    vol[0, 1, 1] = 500
    out = as_volume(vol)
    assert out.dtype == np.uint8 and out[0, 0, 0, 0] == 255 and out[0, 1, 1, 0] == 127


@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 4, 5), (5, 4, 3)])
def test_bad_shapes_are_data_errors(shape):
    with pytest.raises(DataError, match="shape"):
        as_volume(np.zeros(shape, dtype=np.uint8))


def test_missing_path_is_data_error(model, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        model.predict(tmp_path / "nope")


def test_post_override_changes_mask(model, patient):
    base = model.predict(patient)
    strict = model.predict(patient, post=PostConfig(threshold=0.999))
    assert strict.mask.sum() <= base.mask.sum()
    np.testing.assert_array_equal(strict.mask, (base.probabilities >= 0.999).astype(np.uint8))


def test_missing_bundled_model_message(monkeypatch, tmp_path):
    from gliomaseg import inference

    monkeypatch.setattr(inference, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="gliomaseg train") as info:
        gliomaseg.load_model()
    assert "\n" not in str(info.value)


def test_load_model_rejects_bad_inputs(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no such model"):
        gliomaseg.load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="backend"):
        gliomaseg.load_model(tiny_checkpoint, backend="tensorflow")
    with pytest.raises(CheckpointError, match="needs an .onnx"):
        gliomaseg.load_model(tiny_checkpoint, backend="onnx")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        gliomaseg.load_model(junk)


def test_tta_averages_the_flipped_back_logits_of_each_mirror():
    """A 'network' that returns its input: every flip is undone, so TTA changes nothing,
    and a wrong inverse (or a flip of the wrong axis) would show."""
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6)).astype(np.float32)

    def identity(b):
        return b

    def row_index(b):  # ignores its input: each pixel's logit is its row number
        return np.broadcast_to(np.arange(b.shape[-2], dtype=np.float32)[:, None], b.shape)

    for mirror in ("left-right", "both"):
        np.testing.assert_allclose(volume_logits(identity, x, 2, tta=True, mirror=mirror),
                                   x[:, 0], atol=1e-6)
    # Up-down is averaged only with "both": flipped back, the row numbers run the other way.
    lr = volume_logits(row_index, x, tta=True, mirror="left-right")
    ud = volume_logits(row_index, x, tta=True, mirror="both")
    np.testing.assert_allclose(lr[0, :, 0], np.arange(6))
    np.testing.assert_allclose(ud[0, :, 0], np.full(6, 2.5))


def test_largest_component_by_probability_mass_or_by_voxels():
    """A large lukewarm false region beats a small sure tumour by voxels, not by mass."""
    probs = np.zeros((6, 40, 40), np.float32)
    probs[:, 2:12, 2:12] = 0.55  # false region: 600 voxels, mass 330
    probs[1:4, 25:35, 25:35] = 0.99  # tumour: 300 voxels, mass 297
    probs[1:4, 25:35, 35:37] = 0.99  # ... 360 voxels, mass 356.4
    probs[0, 38, 38] = 1.0  # a speck, below min_size
    tumour = np.zeros(probs.shape, np.uint8)
    tumour[1:4, 25:35, 25:37] = 1
    by_mass = postprocess(probs, PostConfig(largest_component=True, largest_by="probability"))
    by_voxels = postprocess(probs, PostConfig(largest_component=True, largest_by="voxels"))
    np.testing.assert_array_equal(by_mass, tumour)
    np.testing.assert_array_equal(by_voxels, (probs == np.float32(0.55)).astype(np.uint8))
    both = postprocess(probs, PostConfig(largest_component=False, min_size=10))
    assert both.sum() == 600 + 360 and both.dtype == np.uint8  # the speck is gone
    assert not postprocess(np.full((2, 8, 8), 0.2, np.float32), PostConfig()).any()


def test_fill_holes_fills_what_is_enclosed_in_3d_only():
    """A cavity inside a block is filled; a tunnel open at both end slices is not."""
    probs = np.zeros((5, 12, 12), np.float32)
    probs[0:5, 1:6, 1:6] = 0.9
    probs[2, 3, 3] = 0.1  # cavity, enclosed on every side
    probs[0:5, 6:11, 6:11] = 0.9
    probs[:, 8, 8] = 0.1  # tunnel through every slice
    filled = postprocess(probs, PostConfig(largest_component=False, fill_holes=True))
    assert filled[2, 3, 3] == 1 and not filled[:, 8, 8].any()
    assert postprocess(probs, PostConfig(largest_component=False))[2, 3, 3] == 0


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True)])
def test_bf16_runs_only_where_the_cpu_computes_it_natively(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert use_bf16(True) == (avx512_bf16 or amx)  # emulated bf16 is ~10x slower than fp32
    assert use_bf16(False) is False
    assert use_bf16(True, "cuda") is True and use_bf16(False, "cuda") is False
