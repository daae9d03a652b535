import numpy as np

from gliomaseg.data import list_slices, read_clinical, read_patient
from gliomaseg.synth import write_dataset


def test_synthetic_dataset_matches_kaggle_layout(synth_root):
    folders = sorted(p for p in synth_root.iterdir() if p.is_dir())
    assert len(folders) == 4
    numbers, images, masks = list_slices(folders[0])
    assert numbers == list(range(1, 13)) and all(m is not None for m in masks)
    from PIL import Image

    with Image.open(images[0]) as img:
        assert (img.format, img.mode, img.size) == ("TIFF", "RGB", (128, 128))
    with Image.open(masks[0]) as img:
        assert set(np.unique(np.asarray(img)).tolist()) <= {0, 255}
    assert set(read_clinical(synth_root)) == {f.name.rsplit("_", 1)[0] for f in folders}


def test_tumour_is_flair_bright_and_spans_slices(synth_root):
    p = read_patient(next(p for p in sorted(synth_root.iterdir()) if p.is_dir()))
    per_slice = p.mask.reshape(p.num_slices, -1).sum(1)
    assert 2 <= (per_slice > 0).sum() < p.num_slices  # several slices, but not all
    tumour, brain = p.mask.astype(bool), (p.image[..., 1] > 10) & ~p.mask.astype(bool)
    assert p.image[..., 1][tumour].mean() > p.image[..., 1][brain].mean() + 40


def test_same_seed_same_data(tmp_path):
    a = write_dataset(tmp_path / "a", cases=1, seed=3, slices=6, size=64)
    b = write_dataset(tmp_path / "b", cases=1, seed=3, slices=6, size=64)
    pa, pb = (read_patient(next(r.glob("TCGA_*"))) for r in (a, b))
    np.testing.assert_array_equal(pa.image, pb.image)
    np.testing.assert_array_equal(pa.mask, pb.mask)
