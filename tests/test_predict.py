"""`gliomaseg predict`: every input kind, every output, refusals and partial failures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

import gliomaseg
from gliomaseg.cli import main
from gliomaseg.config import PostConfig
from gliomaseg.data import DataError, find_patients, read_patient
from gliomaseg.predict import plan, summary_row, write_nifti


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: proves nothing was written there."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return gliomaseg.load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def patients(synth_root):
    return [read_patient(f) for f in find_patients(synth_root)]


def test_dataset_root_writes_every_output(synth_root, tiny_checkpoint, model, patients,
                                          tmp_path, capsys):
    before = snapshot(synth_root)
    out = tmp_path / "out"
    assert main(["predict", str(synth_root), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    assert snapshot(synth_root) == before
    assert "48/48" in capsys.readouterr().err  # progress bar for more than a handful of slices

    rows = {r["case"]: r for r in read_csv(out / "predictions.csv")}
    assert sorted(rows) == [p.case for p in patients]
    for p in patients:
        expected = model.predict(p).mask
        nii = nib.load(out / f"{p.case}.nii.gz")
        data = np.asarray(nii.dataobj)
        assert data.dtype == np.uint8 and data.shape == (128, 128, p.num_slices)
        np.testing.assert_array_equal(data, expected.transpose(1, 2, 0))
        np.testing.assert_array_equal(nii.affine, np.eye(4))
        side = json.loads((out / f"{p.case}.json").read_text())
        assert side["shape"] == [128, 128, p.num_slices]
        assert side["spacing_mm"] is None and side["axis_order"][2].startswith("slice")
        assert [s["number"] for s in side["slices"]] == p.slice_numbers
        assert [Path(s["source"]) for s in side["slices"]] == [q.resolve() for q in p.image_paths]
        for k, n in enumerate(p.slice_numbers):
            tif = np.asarray(Image.open(out / p.case / f"{p.case}_{n}_mask.tif"))
            np.testing.assert_array_equal(tif, expected[k] * 255)
            png = Image.open(out / p.case / f"{p.case}_{n}_overlay.png")
            assert png.mode == "RGB" and png.size == (128, 128)
        row = rows[p.case]
        assert int(row["slices"]) == p.num_slices
        assert int(row["tumour_pixels"]) == int(row["tumour_volume_voxels"]) == expected.sum()
        assert int(row["tumour_slices"]) == int(expected.any(axis=(1, 2)).sum())
        assert row["tumour_volume_mm3"] == ""
        assert 0.0 <= float(row["max_probability"]) <= 1.0
    # masks in the input are ignored, never copied or predicted on
    assert not list(out.rglob("*_mask_mask.tif"))


def test_patient_folder_with_spacing(synth_root, tiny_checkpoint, tmp_path, capsys):
    folder = find_patients(synth_root)[1]
    before = snapshot(synth_root)
    out = tmp_path / "out"
    args = ["predict", str(folder), "-o", str(out), "--model", str(tiny_checkpoint),
            "--spacing", "0.5", "0.5", "2.0", "--tta", "--tta-mirror", "both"]
    assert main(args) == 0
    assert snapshot(synth_root) == before
    (row,) = read_csv(out / "predictions.csv")
    assert row["case"] == folder.name
    assert float(row["tumour_volume_mm3"]) == pytest.approx(int(row["tumour_pixels"]) * 0.5)
    nii = nib.load(out / f"{folder.name}.nii.gz")
    np.testing.assert_array_equal(nii.affine, np.diag([0.5, 0.5, 2.0, 1.0]))
    assert nii.header.get_xyzt_units()[0] == "mm"
    side = json.loads((out / f"{folder.name}.json").read_text())
    assert side["spacing_mm"] == [0.5, 0.5, 2.0] and side["model"]["post"]["tta"] is True
    assert side["model"]["post"]["tta_mirror"] == "both"
    tta = gliomaseg.load_model(tiny_checkpoint).predict(folder, post=PostConfig(
        tta=True, tta_mirror="both"))
    np.testing.assert_array_equal(np.asarray(nii.dataobj), tta.mask.transpose(1, 2, 0))
    assert len(list((out / folder.name).glob("*_mask.tif"))) == 12


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_single_slice(synth_root, tiny_checkpoint, model, patients, tmp_path, capsys, suffix):
    p = patients[0]
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    if suffix == ".tif":
        src, stem = src_dir / p.image_paths[4].name, p.image_paths[4].stem
        shutil.copy2(p.image_paths[4], src)
    else:  # a free-named PNG: the case is the file name
        src, stem = src_dir / "scan.png", "scan"
        Image.fromarray(p.image[4]).save(src)
    before = snapshot(src_dir)
    out = tmp_path / "out"
    assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    assert snapshot(src_dir) == before
    assert "slice/s" not in capsys.readouterr().err  # no progress bar for one slice
    case = stem.rsplit("_", 1)[0] if suffix == ".tif" else stem
    expected = model.predict(p.image[4]).mask
    tif = np.asarray(Image.open(out / case / f"{stem}_mask.tif"))
    np.testing.assert_array_equal(tif, expected[0] * 255)
    assert (out / case / f"{stem}_overlay.png").is_file()
    assert np.asarray(nib.load(out / f"{case}.nii.gz").dataobj).shape == (128, 128, 1)
    assert (out / f"{case}.json").is_file()
    (row,) = read_csv(out / "predictions.csv")
    assert row["case"] == case and row["slices"] == "1"


def test_refuses_to_overwrite(synth_root, tiny_checkpoint, tmp_path, capsys):
    folder = find_patients(synth_root)[0]
    out = tmp_path / "out"
    base = ["predict", str(folder), "-o", str(out), "--model", str(tiny_checkpoint)]
    assert main(base) == 0
    csv_before = (out / "predictions.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert (out / "predictions.csv").stat().st_mtime_ns == csv_before
    assert main([*base, "--overwrite"]) == 0
    assert (out / "predictions.csv").stat().st_mtime_ns != csv_before


def test_refuses_output_inside_input(tmp_path, tiny_checkpoint, patients, capsys):
    src = tmp_path / "P"
    shutil.copytree(patients[0].image_paths[0].parent, src)
    before = snapshot(src)
    for out in (src / "preds", src):
        assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_checkpoint),
                     "--overwrite"]) == 2
        assert "inside the input" in capsys.readouterr().err
    # a single slice may not write beside itself either
    assert main(["predict", str(src / patients[0].image_paths[0].name), "-o", str(src / "x"),
                 "--model", str(tiny_checkpoint)]) == 2
    assert snapshot(src) == before


def test_corrupt_slice_is_reported_and_rest_processed(synth_root, tiny_checkpoint, tmp_path,
                                                      capsys):
    src = tmp_path / "data"
    for folder in find_patients(synth_root)[:2]:
        shutil.copytree(folder, src / folder.name)
    bad_case = find_patients(src)[0].name
    bad = src / bad_case / f"{bad_case}_3.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 200)  # a TIFF header, then garbage
    before = snapshot(src)
    out = tmp_path / "out"
    assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert snapshot(src) == before
    rows = {r["case"]: r for r in read_csv(out / "predictions.csv")}
    assert len(rows) == 2
    assert rows[bad_case]["slices"] == "11" and rows[bad_case]["skipped_files"] == "1"
    masks = {p.name for p in (out / bad_case).glob("*_mask.tif")}
    assert len(masks) == 11 and f"{bad_case}_3_mask.tif" not in masks
    side = json.loads((out / f"{bad_case}.json").read_text())
    assert 3 not in [s["number"] for s in side["slices"]] and len(side["skipped"]) == 1
    assert nib.load(out / f"{bad_case}.nii.gz").shape == (128, 128, 11)


def test_wrong_path_is_one_line_without_traceback(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = run_cli("predict", tmp_path / "no_such_scan", "-o", out, "--model", tiny_checkpoint)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "no_such_scan" in result.stderr
    assert not out.exists()


def test_bad_inputs_are_one_line_errors(tmp_path, synth_root, tiny_checkpoint, capsys):
    folder = find_patients(synth_root)[0]
    mask = next(folder.glob("*_mask.tif"))
    cases = [
        (["predict", str(mask), "-o", str(tmp_path / "a"), "--model", str(tiny_checkpoint)],
         "is a mask"),
        (["predict", str(folder), "-o", str(tmp_path / "b"), "--model", str(tmp_path / "x.pt")],
         "no such model"),
        (["predict", str(folder), "-o", str(tmp_path / "c"), "--model", str(tiny_checkpoint),
          "--spacing", "1", "0", "1"], "positive"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_plan_ignores_masks_and_reports_bad_folders(tmp_path, synth_root):
    src = tmp_path / "data"
    good, other = find_patients(synth_root)[:2]
    shutil.copytree(good, src / good.name)
    shutil.copytree(other, src / other.name)
    dup = src / other.name / f"{other.name}_1.tiff"  # slice 1 twice: the folder is unusable
    shutil.copy2(src / other.name / f"{other.name}_1.tif", dup)
    jobs, problems = plan(src)
    assert [j.case for j in jobs] == [good.name]
    assert len(jobs[0].paths) == 12 and not any("_mask" in p.name for p in jobs[0].paths)
    assert len(problems) == 1 and "appears twice" in problems[0]
    with pytest.raises(DataError):
        plan(tmp_path / "missing")


def test_summary_row_and_nifti_round_trip(tmp_path):
    mask = np.zeros((3, 8, 10), dtype=np.uint8)
    mask[1, 2:4, 3:6] = 1
    probs = mask * 0.9 + 0.05
    row = summary_row("c", mask, probs, (0.5, 1.0, 3.0), skipped=0, seconds=0.1)
    assert row["tumour_pixels"] == 6 and row["tumour_slices"] == 1
    assert row["tumour_volume_mm3"] == pytest.approx(9.0)
    assert row["max_probability"] == pytest.approx(0.95)
    write_nifti(tmp_path / "m.nii.gz", mask, None)
    back = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    assert back.shape == (8, 10, 3)
    np.testing.assert_array_equal(back[..., 1], mask[1])
