"""Integration on real patients unpacked from ../shared/data/lgg (skipped when absent)."""

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
