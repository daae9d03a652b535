"""Integration on real patients unpacked from ../shared/data/lgg (skipped when absent).

These first 3 patients are in the bundled model's training set: the check below is that the
shipped weights work, not how well they generalise (see MODEL.md for that)."""

import numpy as np
from conftest import run_cli

from gliomaseg.data import check_dataset, read_patient, summarize


def test_real_patients_read_in_order_with_correct_types(real_root):
    report = check_dataset(real_root)
    assert report.ok, report.problems
    assert len(report.patients) == 3
    for p in report.patients:
        assert p.image.dtype == np.uint8 and p.image.shape[1:] == (256, 256, 3)
        assert p.mask.shape == p.image.shape[:3] and set(np.unique(p.mask)) <= {0, 1}
        assert p.slice_numbers == list(range(1, p.num_slices + 1))
        assert p.site in {"CS", "DU", "EZ", "FG", "HT"}
        assert p.clinical  # data.csv row found
    s = summarize(report.patients)
    assert 0 < s["slices_with_tumour"] < s["slices"]


def test_real_slice_order_matches_file_numbers(real_root):
    case = sorted(p for p in real_root.iterdir() if p.is_dir())[0]
    p = read_patient(case)
    from PIL import Image

    with Image.open(case / f"{case.name}_10.tif") as img:
        np.testing.assert_array_equal(p.image[9], np.asarray(img))


def test_check_cli_on_real_data(real_root):
    r = run_cli("check", real_root)
    assert r.returncode == 0 and "patients: 3" in r.stdout, r.stderr


def test_bundled_model_segments_real_patients(real_root):
    """The shipped weights load with no path and find the tumour on real patients."""
    import gliomaseg
    from gliomaseg.metrics import confusion, dice

    model = gliomaseg.load_model()
    assert (model.cfg.data.context, model.cfg.data.channels, model.cfg.post.tta) == (2, "flair", True)
    scores = []
    for case in sorted(p for p in real_root.iterdir() if p.is_dir()):
        patient = read_patient(case)
        result = model.predict(patient)
        assert result.mask.shape == patient.mask.shape
        scores.append(dice(confusion(result.mask, patient.mask)))
    assert np.mean(scores) > 0.6, scores
