"""NIfTI input: reading into a Patient, orientation, the mask on the input grid, predict, evaluate."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

import gliomaseg
from gliomaseg import metrics
from gliomaseg.cli import main
from gliomaseg.data import DataError
from gliomaseg.nifti import find_labels, read_nifti, scale_to_uint8, write_mask
from gliomaseg.synth import make_case

ZOOMS = (0.9, 1.1, 3.0)  # rows (A->P), columns (R->L), slices (I->S), in mm


def display_phantom(seed: int, slices: int = 10, rows: int = 240, cols: int = 200):
    """A phantom as the model sees slices: (S, rows, cols, 3) uint8 and (S, rows, cols) {0, 1}.

    Non-square (BraTS-like 240 rows, 200 columns) so that swapped axes cannot go unnoticed.
    """
    image, mask = make_case(np.random.default_rng(seed), slices=slices, size=rows)
    c0 = (rows - cols) // 2
    return image[:, :, c0:c0 + cols], (mask[:, :, c0:c0 + cols] > 0).astype(np.uint8)


def stored(volume: np.ndarray, codes: str, dtype=np.int16) -> nib.Nifti1Image:
    """A display-order (S, H, W, ...) array stored as a NIfTI whose voxel axes point `codes`.

    Built by hand for the display orientation (rows -> P, columns -> L, slices -> S), then
    reoriented with nibabel, so every storage shows the same anatomy at the same world
    coordinates.
    """
    data = np.moveaxis(volume, 0, 2).astype(dtype)
    affine = np.array([[0.0, -ZOOMS[1], 0.0, 100.0],  # column index -> patient left (-x)
                       [-ZOOMS[0], 0.0, 0.0, 120.0],  # row index -> posterior (-y)
                       [0.0, 0.0, ZOOMS[2], -40.0],  # slice index -> superior (+z)
                       [0.0, 0.0, 0.0, 1.0]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    out = img.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes))))
    assert "".join(nib.aff2axcodes(out.affine)) == codes
    return out


def save(img: nib.Nifti1Image, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def data_of(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return gliomaseg.load_model(tiny_checkpoint)


# --- reading -----------------------------------------------------------------------------------

def test_every_storage_order_gives_the_same_slices(tmp_path):
    image, _ = display_phantom(0, slices=6, rows=48, cols=40)
    expected = np.stack([scale_to_uint8(image[..., c])[0] for c in range(3)], axis=-1)
    slice_axes = {"PLS": 2, "RAS": 2, "LPS": 2, "SAR": 0, "RSP": 1}
    for codes, axis in slice_axes.items():
        img = stored(image, codes)
        vol = read_nifti(save(img, tmp_path / f"{codes}.nii.gz"))
        np.testing.assert_array_equal(vol.patient.image, expected, err_msg=codes)
        assert vol.slice_axis == axis and vol.channels == "rgb" and vol.shape == img.shape[:3]
        assert vol.spacing == pytest.approx(ZOOMS)
        assert vol.patient.case == codes and vol.patient.mask is None
        # slice_numbers: each model slice's voxel index along the input's slice axis
        raw = data_of(tmp_path / f"{codes}.nii.gz")[..., 1]
        for k, n in enumerate(vol.patient.slice_numbers):
            plane = np.take(raw, n, axis=axis)
            assert plane.sum() == image[k, ..., 1].astype(np.int64).sum()
        # and back onto the input grid, exactly
        np.testing.assert_array_equal(vol.to_input(vol.patient.image[..., 1]),
                                      scale_to_uint8(raw)[0])


def test_ras_slices_are_shown_as_in_the_kaggle_data(tmp_path):
    """RAS+ voxel (i, j, k): a blob at the left, anterior, superior corner lands top right, last.

    Kaggle slices: anterior at the top, patient's left on the image's right (radiological),
    ascending slices go up the head.
    """
    data = np.zeros((30, 40, 6), np.float32)
    data[5:20, 5:35, 1:5] = 100.0  # a "brain" (so the volume is not empty)
    data[1:6, 35:39, 5] = 300.0  # low i: patient left; high j: anterior; high k: superior
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    vol = read_nifti(save(img, tmp_path / "ras.nii"))
    assert vol.patient.image.shape == (6, 40, 30, 3)  # (slices, A->P rows, R->L columns)
    blob = np.argwhere(vol.patient.image[..., 1] == 255)
    assert len(blob) == 20
    assert set(blob[:, 0]) == {5} and blob[:, 1].max() < 5 and blob[:, 2].min() >= 24
    assert vol.patient.slice_numbers == list(range(6))


def test_flair_only_and_channel_order(tmp_path):
    image, _ = display_phantom(1, slices=4, rows=32, cols=32)
    flair = read_nifti(save(stored(image[..., 1], "RAS"), tmp_path / "flair.nii.gz"))
    assert flair.channels == "flair"
    np.testing.assert_array_equal(flair.patient.image[..., 0], flair.patient.image[..., 2])
    np.testing.assert_array_equal(flair.patient.image[..., 1], scale_to_uint8(image[..., 1])[0])
    single = read_nifti(save(stored(image[..., 1:2], "RAS"), tmp_path / "x1.nii.gz"))  # (X,Y,Z,1)
    np.testing.assert_array_equal(single.patient.image, flair.patient.image)
    swapped = image[..., [1, 0, 2]]  # FLAIR stored first: the reader must not guess
    rgb = read_nifti(save(stored(swapped, "RAS"), tmp_path / "rgb.nii.gz"))
    np.testing.assert_array_equal(rgb.patient.image[..., 1], scale_to_uint8(image[..., 0])[0])


def test_intensity_scaling():
    values = np.full((10, 10, 10), 400.0, np.float32)
    values[:2] = 0.0
    values[5, 5, 5] = 1e6  # one hot voxel must not squeeze the rest into a few gray levels
    values[6, 6, 6] = np.nan
    scaled, top = scale_to_uint8(values)
    assert scaled.dtype == np.uint8 and top == pytest.approx(400.0)
    assert scaled[0].max() == 0 and scaled[6, 6, 6] == 0 and scaled[5, 5, 5] == 255
    assert scaled[3, 0, 0] == 255
    ramp = np.linspace(-1.0, 3.0, 1000, dtype=np.float32)  # negative (e.g. z-scored) input
    scaled, _ = scale_to_uint8(ramp)
    assert scaled[0] == 0 and scaled[-1] == 255 and np.all(np.diff(scaled.astype(int)) >= 0)


def test_scaled_integer_data_is_read_with_its_slope(tmp_path):
    image, _ = display_phantom(2, slices=4, rows=32, cols=32)
    img = stored(image[..., 1], "LPS")
    img.header.set_slope_inter(0.5, 0.0)
    vol = read_nifti(save(img, tmp_path / "slope.nii.gz"))
    assert vol.scale[0] == pytest.approx(0.5 * np.percentile(image[..., 1][image[..., 1] > 0], 99.5))


@pytest.mark.parametrize("kind, message", [
    ("truncated", "cannot read the voxel data"),
    ("garbage", "not a readable NIfTI"),
    ("empty_file", "not a readable NIfTI"),
    ("2d", "got shape (32, 32)"),
    ("two_channels", "got shape (32, 32, 4, 2)"),
    ("5d", "got shape"),
    ("zeros", "empty"),
    ("nan", "empty"),
    ("tiny", "too small"),
    ("degenerate", "degenerate"),
])
def test_bad_volumes_are_one_line_errors(tmp_path, kind, message):
    path = tmp_path / f"{kind}.nii.gz"
    good = np.random.default_rng(0).uniform(0, 100, (32, 32, 4)).astype(np.float32)
    arrays = {"2d": good[..., 0], "two_channels": np.stack([good, good], -1),
              "5d": good[..., None, None], "zeros": np.zeros_like(good),
              "nan": np.full_like(good, np.nan), "tiny": good[:4, :4]}
    if kind == "truncated":
        save(nib.Nifti1Image(good, np.eye(4)), path)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif kind == "garbage":
        path.write_bytes(gzip.compress(b"not a nifti header " * 40))
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "degenerate":
        img = nib.Nifti1Image(good, None)
        img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=2)  # a collapsed axis
        save(img, path)
    else:
        save(nib.Nifti1Image(arrays[kind], np.eye(4)), path)
    with pytest.raises(DataError) as err:
        read_nifti(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_mask_keeps_the_input_header(tmp_path):
    """qform/sform and their codes, voxel size and grid survive, in NIfTI-1 and NIfTI-2."""
    image, _ = display_phantom(3, slices=5, rows=24, cols=20)
    base = stored(image, "LPS")
    other = base.affine.copy()
    other[:3, 3] += 7.0  # a qform that differs from the sform, as some converters write
    for cls, (qcode, scode) in [(nib.Nifti1Image, (1, 2)), (nib.Nifti1Image, (1, 0)),
                                (nib.Nifti1Image, (0, 0)), (nib.Nifti2Image, (2, 1))]:
        img = cls(np.asarray(base.dataobj), None)
        img.header.set_qform(other if qcode else None, code=qcode)
        img.header.set_sform(base.affine if scode else None, code=scode)
        img.header.set_zooms((*base.header.get_zooms()[:3], 1.0))
        img.header.set_slope_inter(2.0, 1.0)  # the input's scaling must not reach the mask
        src = save(img, tmp_path / f"in_{cls.__name__}_{qcode}{scode}.nii.gz")
        vol = read_nifti(src)
        mask = (vol.patient.image[..., 1] > 120).astype(np.uint8)
        out = tmp_path / f"out_{cls.__name__}_{qcode}{scode}.nii.gz"
        affine = write_mask(out, mask, vol)
        inp, res = nib.load(str(src)), nib.load(str(out))
        assert type(res) is cls and res.shape == inp.shape[:3]
        np.testing.assert_array_equal(res.affine, inp.affine)
        np.testing.assert_array_equal(affine, inp.affine)
        assert (int(res.header["qform_code"]), int(res.header["sform_code"])) == (qcode, scode)
        np.testing.assert_array_equal(res.header.get_qform(), inp.header.get_qform())
        assert res.header.get_zooms() == inp.header.get_zooms()[:3]
        data = np.asarray(res.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
        np.testing.assert_array_equal(data, vol.to_input(mask))


def test_find_labels(tmp_path):
    def touch(*names):
        for n in names:
            (tmp_path / n).write_bytes(b"")
        return [tmp_path / n for n in names]

    touch("a.nii.gz", "a_seg.nii.gz", "b.nii", "b_mask.nii",
          "BraTS2021_00000_flair.nii.gz", "BraTS2021_00000_seg.nii.gz",
          "BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000-seg.nii.gz",
          "c.nii.gz", "c_seg.nii.gz", "c_mask.nii.gz", "d.nii.gz")
    assert find_labels(tmp_path / "a.nii.gz").name == "a_seg.nii.gz"
    assert find_labels(tmp_path / "b.nii").name == "b_mask.nii"
    assert find_labels(tmp_path / "BraTS2021_00000_flair.nii.gz").name == "BraTS2021_00000_seg.nii.gz"
    assert find_labels(tmp_path / "BraTS-GLI-00001-000-t2f.nii.gz").name == \
        "BraTS-GLI-00001-000-seg.nii.gz"
    with pytest.raises(DataError, match="several label files"):
        find_labels(tmp_path / "c.nii.gz")
    with pytest.raises(DataError, match="--labels"):
        find_labels(tmp_path / "d.nii.gz")


# --- predict -----------------------------------------------------------------------------------

def test_predict_brats_sized_volume_lands_on_the_input_grid(tmp_path, tiny_checkpoint, model,
                                                            capsys):
    """240 x 200 slices (model grid 64), LPS like BraTS: the mask overlays the input voxel for voxel."""
    image, truth = display_phantom(4)
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = save(stored(image, "LPS"), src_dir / "P1.nii.gz")
    truth_in = np.asarray(stored(truth, "LPS").dataobj)
    before = snapshot(src_dir)
    out = tmp_path / "out"
    assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    assert snapshot(src_dir) == before
    assert "note:" not in capsys.readouterr().err  # three channels for a three-channel model

    inp, res = nib.load(str(src)), nib.load(str(out / "P1.nii.gz"))
    assert res.shape == inp.shape[:3] == (200, 240, 10)
    np.testing.assert_array_equal(res.affine, inp.affine)
    assert nib.aff2axcodes(res.affine) == ("L", "P", "S")
    assert res.header.get_zooms() == inp.header.get_zooms()[:3]
    data = np.asarray(res.dataobj)
    vol = read_nifti(src)
    np.testing.assert_array_equal(data, vol.to_input(model.predict(vol.patient.image).mask))
    # the known tumour is found at the same voxel indices
    dice = metrics.dice(metrics.confusion(data, truth_in))
    assert dice > 0.6, dice

    side = json.loads((out / "P1.json").read_text())
    assert side["shape"] == [200, 240, 10] and side["orientation"] == "LPS"
    assert side["slice_axis"] == 2 and side["spacing_mm"] == pytest.approx([1.1, 0.9, 3.0])
    np.testing.assert_allclose(side["affine"], inp.affine)
    assert [s["number"] for s in side["slices"]] == list(range(10))
    assert Path(side["source"]) == src.resolve()
    assert len(list((out / "P1").glob("P1_*_mask.tif"))) == 10
    assert len(list((out / "P1").glob("P1_*_overlay.png"))) == 10
    with (out / "predictions.csv").open(newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["case"] == "P1" and int(row["slices"]) == 10
    assert int(row["tumour_pixels"]) == int(data.sum())
    assert float(row["tumour_volume_mm3"]) == pytest.approx(data.sum() * 0.9 * 1.1 * 3.0, rel=1e-4)


def test_predict_same_anatomy_in_any_storage(tmp_path, tiny_checkpoint):
    """One head stored axially (RAS) and sagittally (SAR): the same mask in world space."""
    image, _ = display_phantom(5, slices=8, rows=64, cols=56)
    masks = {}
    for codes in ("RAS", "SAR"):
        src_dir = tmp_path / f"in_{codes}"
        src_dir.mkdir()
        src = save(stored(image, codes), src_dir / "head.nii.gz")
        out = tmp_path / f"out_{codes}"
        assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
        res = nib.load(str(out / "head.nii.gz"))
        assert res.shape == nib.load(str(src)).shape[:3]
        to_ras = ornt_transform(io_orientation(res.affine), axcodes2ornt(("R", "A", "S")))
        masks[codes] = np.asarray(res.as_reoriented(to_ras).dataobj)
    assert masks["RAS"].any()
    np.testing.assert_array_equal(masks["RAS"], masks["SAR"])


def test_predict_flair_only_volume(tmp_path, tiny_checkpoint, model, capsys):
    image, _ = display_phantom(6, slices=6, rows=64, cols=56)
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = save(stored(image[..., 1], "RAS"), src_dir / "flair.nii")
    out = tmp_path / "out"
    assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "data.channels=flair" in err  # FLAIR only, three-channel model
    res = nib.load(str(out / "flair.nii.gz"))
    np.testing.assert_array_equal(res.affine, nib.load(str(src)).affine)
    vol = read_nifti(src)
    np.testing.assert_array_equal(np.asarray(res.dataobj),
                                  vol.to_input(model.predict(vol.patient.image).mask))
    side = json.loads((out / "flair.json").read_text())
    assert side["channels"][0].startswith("FLAIR") and side["model"]["channels"] == "rgb"


def test_predict_refusals(tmp_path, tiny_checkpoint, capsys):
    image, _ = display_phantom(6, slices=4, rows=32, cols=32)
    src = save(stored(image, "RAS"), tmp_path / "scan.nii.gz")
    assert main(["predict", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
                 "--spacing", "1", "1", "1"]) == 2
    err = capsys.readouterr().err
    assert "drop --spacing" in err and err.count("\n") == 1
    # results never land beside the input, as for single slices
    assert main(["predict", str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_checkpoint)]) == 2
    assert "inside the input" in capsys.readouterr().err


def test_corrupt_nifti_via_the_console(tmp_path, tiny_checkpoint):
    image, _ = display_phantom(7, slices=4, rows=32, cols=32)
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = save(stored(image, "RAS"), src_dir / "scan.nii.gz")
    src.write_bytes(src.read_bytes()[:-200])  # truncated download
    out = tmp_path / "out"
    result = run_cli("predict", src, "-o", out, "--model", tiny_checkpoint)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "scan.nii.gz" in result.stderr
    assert not out.exists()


# --- evaluate ----------------------------------------------------------------------------------

def test_evaluate_nifti_with_brats_labels(tmp_path, tiny_checkpoint, model):
    image, truth = display_phantom(8, slices=8, rows=96, cols=80)
    case_dir = tmp_path / "BraTS2021_00008"
    case_dir.mkdir()
    src = save(stored(image, "LPS"), case_dir / "BraTS2021_00008_flair.nii.gz")
    labels = np.where(truth > 0, np.random.default_rng(0).choice([1, 2, 4], truth.shape), 0)
    save(stored(labels, "LPS", dtype=np.uint8), case_dir / "BraTS2021_00008_seg.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", str(src), "-o", str(out), "--model", str(tiny_checkpoint),
                 "--no-variants"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (case,) = summary["per_case"]
    pred = model.predict(read_nifti(src).patient.image).mask
    assert case["case"] == "BraTS2021_00008_flair"
    assert case["dice"] == pytest.approx(metrics.dice(metrics.confusion(pred, truth)), abs=1e-12)
    assert case["dice"] > 0.6
    page = (out / "report.html").read_text()
    assert "BraTS2021_00008_flair" in page  # the gallery re-read it
    # HD95 in mm, from the header's anisotropic voxel size (slice, row, column order)
    assert summary["units"]["hd95"] == "mm" and "HD95 (mm)" in page
    in_mm = metrics.hd95(pred, truth, spacing=(ZOOMS[2], ZOOMS[0], ZOOMS[1]))
    assert case["hd95"] == pytest.approx(in_mm) and in_mm != pytest.approx(metrics.hd95(pred, truth))


def test_evaluate_nifti_errors(tmp_path, tiny_checkpoint, synth_root, capsys):
    image, truth = display_phantom(9, slices=4, rows=32, cols=32)
    data_dir, label_dir = tmp_path / "img", tmp_path / "lab"
    data_dir.mkdir()
    label_dir.mkdir()
    src = save(stored(image, "RAS"), data_dir / "scan.nii.gz")
    shifted = stored(truth, "RAS", dtype=np.uint8)
    shifted = nib.Nifti1Image(np.asarray(shifted.dataobj), shifted.affine + np.eye(4) * 0.5)
    small = stored(truth[:, :16], "RAS", dtype=np.uint8)
    args = ["--model", str(tiny_checkpoint), "--no-variants"]
    cases = [
        ([str(src)], "no labels found"),
        ([str(src), "--labels", str(save(small, label_dir / "small.nii.gz"))], "differs from"),
        ([str(src), "--labels", str(save(shifted, label_dir / "shift.nii.gz"))], "resample"),
        ([str(src), "--labels", str(label_dir / "missing.nii.gz")], "no such file"),
        ([str(synth_root), "--labels", str(label_dir / "small.nii.gz")], "for a NIfTI image"),
        ([str(src), "--cases", "x"], "one case"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert main(["evaluate", *extra, "-o", str(tmp_path / f"out{i}"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    # an output beside missing labels: the missing file is the error, not the output's place
    assert main(["evaluate", str(src), "--labels", str(label_dir / "missing.nii.gz"),
                 "-o", str(label_dir / "out"), *args]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.nii.gz: no such file or directory")
