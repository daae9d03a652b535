import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gliomaseg.data import (
    DataError,
    check_dataset,
    find_patients,
    missing_sequences,
    pair_fold,
    read_image,
    read_mask,
    read_patient,
    read_splits,
    site_of,
    split_folds,
    summarize,
)


@pytest.fixture
def copy_root(synth_root, tmp_path):
    """A private, writable copy of the synthetic dataset (for corrupting)."""
    return shutil.copytree(synth_root, tmp_path / "kaggle_3m")


def first_case(root):
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


def test_reads_volume_in_integer_slice_order(synth_root):
    p = read_patient(first_case(synth_root))
    assert p.image.shape == (12, 128, 128, 3) and p.image.dtype == np.uint8
    assert p.mask.shape == (12, 128, 128) and set(np.unique(p.mask)) <= {0, 1}
    assert p.slice_numbers == sorted(p.slice_numbers) == list(range(1, 13))
    # slice 10 must come after 9, not after 1 (lexical order would be 1, 10, 11, 12, 2, ...)
    assert p.image_paths[9].name.endswith("_10.tif")
    assert p.site == "CS" and p.clinical["Patient"] == p.case.rsplit("_", 1)[0]


def test_finds_patients_from_root_parent_or_single_folder(synth_root):
    assert len(find_patients(synth_root)) == 4
    assert len(find_patients(synth_root.parent)) == 4  # the folder Kaggle's zip unpacks into
    assert find_patients(first_case(synth_root)) == [first_case(synth_root)]


def test_ignores_unrelated_files(copy_root):
    (copy_root / "README.md").write_text("hi")
    (copy_root / ".DS_Store").write_bytes(b"\0\1")
    (first_case(copy_root) / "notes.txt").write_text("x")
    (first_case(copy_root) / ".DS_Store").write_bytes(b"\0")
    report = check_dataset(copy_root)
    assert report.ok and len(report.patients) == 4


def test_grayscale_rgba_and_16bit_conversions(tmp_path):
    gray = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    Image.fromarray(gray).save(tmp_path / "g.tif")
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 7)]), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(gray.astype(np.uint16) * 4).save(tmp_path / "w.tif")
    g = read_image(tmp_path / "g.tif")
    assert g.shape == (64, 64, 3) and (g[..., 1] == gray).all()
    assert (read_image(tmp_path / "a.png") == g).all()
    w = read_image(tmp_path / "w.tif")
    assert w.dtype == np.uint8 and w.max() == 255


def test_non_256_sizes_are_read(tmp_path):
    Image.fromarray(np.zeros((96, 80, 3), np.uint8)).save(tmp_path / "x.tif")
    assert read_image(tmp_path / "x.tif").shape == (96, 80, 3)


@pytest.mark.parametrize("path", ["does/not/exist", "file"])
def test_wrong_paths(tmp_path, path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="no such file|not a directory"):
        find_patients(tmp_path / path)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no patient folders"):
        find_patients(tmp_path)


def test_truncated_tiff_is_reported_with_its_name(copy_root):
    case = first_case(copy_root)
    target = case / f"{case.name}_5.tif"
    target.write_bytes(target.read_bytes()[:300])
    report = check_dataset(copy_root)
    assert not report.ok and len(report.problems) == 1
    assert target.name in report.problems[0] and "\n" not in report.problems[0]
    assert len(report.patients) == 3


def test_missing_mask_is_fine_for_prediction_but_not_training(copy_root):
    case = first_case(copy_root)
    (case / f"{case.name}_3_mask.tif").unlink()
    with pytest.raises(DataError, match="no mask"):
        read_patient(case, require_masks=True)
    assert read_patient(case).mask is None
    assert check_dataset(copy_root, require_masks=False).ok


def test_bad_mask_values_and_shapes(copy_root):
    case = first_case(copy_root)
    Image.fromarray(np.full((128, 128), 7, np.uint8)).save(case / f"{case.name}_2_mask.tif")
    with pytest.raises(DataError, match="0 or 255, found 7"):
        read_patient(case)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(case / f"{case.name}_2_mask.tif")
    with pytest.raises(DataError, match="differs from its image"):
        read_patient(case)


def test_mismatched_slice_shapes(copy_root):
    case = first_case(copy_root)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(case / f"{case.name}_4.tif")
    with pytest.raises(DataError, match="differs"):
        read_patient(case)


def test_reader_never_writes_to_input(synth_root):
    before = {p: p.stat().st_mtime_ns for p in synth_root.rglob("*")}
    check_dataset(synth_root)
    assert {p: p.stat().st_mtime_ns for p in synth_root.rglob("*")} == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_any_garbage_file_gives_a_data_error(tmp_path, blob):
    path = tmp_path / "x_1.tif"
    path.write_bytes(blob)
    for reader in (read_image, read_mask):
        try:
            reader(path)
        except DataError as exc:
            assert "\n" not in str(exc)


def test_summary_counts(synth_root):
    report = check_dataset(synth_root)
    s = summarize(report.patients)
    assert s["patients"] == 4 and s["slices"] == 48
    assert 0 < s["slices_with_tumour"] < 48
    per_patient = s["tumour_slices_per_patient"]
    assert sum(per_patient.values()) == s["slices_with_tumour"]
    assert all(per_patient[p.case] == int(p.mask.any(axis=(1, 2)).sum()) for p in report.patients)
    assert s["tumour_pixels"] == sum(int(p.mask.sum()) for p in report.patients)
    assert sum(s["sites"].values()) == 4
    assert s["missing_sequences"] == {}  # the phantoms have three distinct channels


def test_missing_sequences_are_the_channels_equal_to_flair():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(2, 8, 8, 3), dtype=np.uint8)
    assert missing_sequences(image) == []
    image[..., 2] = image[..., 1]
    assert missing_sequences(image) == ["post-contrast"]
    image[..., 0] = image[..., 1]
    assert missing_sequences(image) == ["pre-contrast", "post-contrast"]


def test_site_of():
    assert site_of("TCGA_DU_7014_19860618") == "DU"
    assert site_of("patient7") == "unknown"


def test_splits_are_patient_level_disjoint_and_stratified():
    cases = [f"TCGA_{s}_{i:04d}_2000" for s in ("CS", "DU", "HT") for i in range(s == "CS" and 5 or 11)]
    folds = split_folds(cases, 5, seed=0)
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(cases)  # every patient validated exactly once ...
    assert sum(len(v) for v in vals) == len(cases)  # ... and in only one fold
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert set(f["train"]) | set(f["val"]) == set(cases)
    du = [sum(site_of(c) == "DU" for c in v) for v in vals]
    assert max(du) - min(du) <= 1  # each site spread evenly
    assert split_folds(cases, 5, seed=0) == folds
    assert split_folds(cases, 5, seed=1) != folds


def test_pair_fold_trains_without_both_folds_and_serves_each_outer_fold():
    cases = [f"TCGA_DU_{i:04d}_2000" for i in range(20)]
    folds = split_folds(cases, 5, seed=0)
    for j, k in [(0, 1), (3, 1), (2, 4)]:
        pair = pair_fold(folds, (j, k))
        assert pair == pair_fold(folds, (k, j))
        assert set(pair["val"]) == set(folds[j]["val"]) | set(folds[k]["val"])
        assert not set(pair["train"]) & set(pair["val"])
        assert set(pair["train"]) | set(pair["val"]) == set(cases)
    # Outer fold 1's networks, the pairs (j, 1): none trained on fold 1, all four did on the rest.
    trained = [set(pair_fold(folds, (j, 1))["train"]) for j in (0, 2, 3, 4)]
    assert not set.union(*trained) & set(folds[1]["val"])
    assert set.union(*trained) == set(cases) - set(folds[1]["val"])
    for bad in [(0, 0), (0, 5), (-1, 2)]:
        with pytest.raises(DataError):
            pair_fold(folds, bad)
    with pytest.raises(DataError):
        pair_fold(folds[:2], (0, 1))


@pytest.mark.parametrize("text", ["", "{", "[]", "{}", '[{"train": []}]', '[{"val": "A"}]',
                                  '[{"val": [1]}]', '[{"val": [], "train": null}]', "\xff"])
def test_read_splits_refuses_what_is_not_a_splits_file(tmp_path, text):
    path = tmp_path / "splits.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match="splits file"):
        read_splits(path)
    with pytest.raises(DataError, match="splits file"):
        read_splits(tmp_path / "missing.json")
    path.write_text(json.dumps(split_folds([f"TCGA_DU_{i:04d}_2000" for i in range(4)], 2, 0)))
    assert [len(f["val"]) for f in read_splits(path)] == [2, 2]


def test_split_refuses_too_few_patients():
    with pytest.raises(DataError):
        split_folds(["a", "b"], 5, 0)
