"""report: summary.json (strict JSON), per_case.csv and a self-contained report.html; viz figures."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from gliomaseg import viz
from gliomaseg.checkpoint import bundle
from gliomaseg.data import list_cases, read_patient, write_slice
from gliomaseg.evaluate import evaluate, load_for_evaluation
from gliomaseg.report import json_safe, write_report


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


@pytest.fixture(scope="module")
def report_dir(synth_root, tiny_run, tmp_path_factory):
    """All 4 synthetic patients (3 trained on, 1 validated on) scored by the tiny run's model."""
    model = load_for_evaluation(tiny_run / "best.pt")
    ev = evaluate(synth_root, model.logits_fn, model.cfg)
    out = tmp_path_factory.mktemp("report")
    summary = write_report(out, ev, model)
    return out, summary


def test_json_safe():
    raw = {"a": math.nan, "b": [np.float32(0.5), np.int64(3), (1, math.inf)],
           "c": np.array([1.0, np.nan]), "d": {"e": None, 1: True}}
    assert json_safe(raw) == {"a": None, "b": [0.5, 3, [1, None]], "c": [1.0, None],
                              "d": {"e": None, "1": True}}
    json.dumps(json_safe(raw), allow_nan=False)


def test_summary_json_is_strict_and_complete(report_dir, synth_root):
    out, summary = report_dir
    on_disk = strict_json((out / "summary.json").read_text())
    assert on_disk == summary
    a = on_disk["aggregate"]
    for key in ("dice_mean", "dice_median", "dice_std", "dice_ci95", "iou_mean",
                "pixel_accuracy", "hd95_median", "precision_mean", "recall_mean"):
        assert key in a, key
    assert 0.0 <= a["dice_mean"] <= 1.0
    dice = [r["dice"] for r in on_disk["per_case"]]
    assert a["dice_mean"] == pytest.approx(np.mean(dice))  # mean PV-DSC over patients
    assert [r["case"] for r in on_disk["per_case"]] == list_cases(synth_root)
    for field in ("case", "dice", "iou", "precision", "recall", "hd95", "volume_true",
                  "volume_pred", "slices"):
        assert field in on_disk["per_case"][0]
    assert on_disk["per_case"][0]["slices"] == 12
    assert {"detection", "dice", "slices"} <= set(on_disk["slice_level"])
    assert len(on_disk["variants"]) == 6 and on_disk["timing"]["patients"] == 4
    assert on_disk["model"]["epoch"] >= 1 and on_disk["config"]["post"]["threshold"] == 0.5


def test_per_case_csv_matches_summary(report_dir):
    out, summary = report_dir
    with (out / "per_case.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == [r["case"] for r in summary["per_case"]]
    for row, expected in zip(rows, summary["per_case"], strict=True):
        assert float(row["dice"]) == pytest.approx(expected["dice"])
        assert int(row["volume_true"]) == expected["volume_true"]


def test_html_is_self_contained_with_gallery_and_curves(report_dir):
    out, summary = report_dir
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # distribution, per-patient bars, 3 gallery patients (best, median, worst), curves
    assert len(images) == 6
    for data in images:
        png_size(base64.b64decode(data))
    gallery = page.split('<div class="gallery">', 1)[1]
    assert gallery.count("<figure>") == 3
    for label in ("Best", "Median", "Worst"):
        assert f"{label}: TCGA_" in gallery
    assert "Research use only" in page and "Training curves" in page
    for row in summary["per_case"]:
        assert row["case"] in page
    assert f"{summary['aggregate']['dice_mean']:.3f}" in page
    assert "used above" in page  # the chosen row of the variants table
    assert summary["units"]["hd95"] == "voxels" and "HD95 (voxels)" in page  # no voxel size


def test_training_patients_are_flagged(report_dir):
    out, summary = report_dir
    assert len(summary["model"]["evaluated_cases_in_training"]) == 3
    assert len(summary["model"]["evaluated_cases_in_validation"]) == 1
    assert "Not a held-out test" in (out / "report.html").read_text()


def test_model_outside_a_run_folder_has_no_curves_or_warning(synth_root, tiny_checkpoint,
                                                              tmp_path):
    shutil.copy(tiny_checkpoint, tmp_path / "model.pt")
    model = load_for_evaluation(tmp_path / "model.pt")
    ev = evaluate(synth_root, model.logits_fn, model.cfg, cases=list_cases(synth_root)[:1],
                  variants=False)
    summary = write_report(tmp_path / "out", ev, model)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Training curves" not in page and "Not a held-out test" not in page
    assert summary["model"]["curves"] is False and summary["variants"] == []
    assert "Variants were not computed" in page


def test_a_bundled_model_remembers_its_training_patients(synth_root, tiny_checkpoint, tmp_path):
    """Outside its run folder, a bundled model still flags the patients it was trained on."""
    bundle([tiny_checkpoint, tiny_checkpoint], tmp_path / "ens.pt")
    model = load_for_evaluation(tmp_path / "ens.pt")
    cases = list_cases(synth_root)
    ev = evaluate(synth_root, model.logits_fn, model.cfg, cases=cases[:1], variants=False)
    summary = write_report(tmp_path / "out", ev, model)
    assert summary["model"]["evaluated_cases_in_training"] == cases[:1]
    assert "Not a held-out test" in (tmp_path / "out" / "report.html").read_text()


def test_empty_truth_and_prediction_is_null_and_excluded(synth_root, tmp_path):
    """A tumour-free patient with no prediction: Dice null in JSON, n/a on the page, excluded."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    empty_case = list_cases(data)[0]
    patient = read_patient(data / empty_case)
    for n, mask in zip(patient.slice_numbers, patient.mask, strict=True):
        write_slice(data / empty_case / f"{empty_case}_{n}_mask.tif", np.zeros_like(mask))

    def nothing(x):  # a network that never finds tumour
        return np.full((x.shape[0], 1, *x.shape[2:]), -30.0, dtype=np.float32)

    ev = evaluate(data, nothing, TINY)
    summary = write_report(tmp_path / "out", ev, None)
    by_case = {r["case"]: r for r in summary["per_case"]}
    assert by_case[empty_case]["dice"] is None and by_case[empty_case]["hd95"] is None
    assert all(r["dice"] == 0.0 for c, r in by_case.items() if c != empty_case)
    a = summary["aggregate"]
    assert a["excluded_empty"] == [empty_case] and a["dice_n"] == 3 and a["dice_mean"] == 0.0
    assert summary["slice_level"]["detection"]["sensitivity"] == 0.0
    strict_json((tmp_path / "out" / "summary.json").read_text())
    page = (tmp_path / "out" / "report.html").read_text()
    assert "n/a" in page and f"excluded from the means: {empty_case}" in page


# --- figures -----------------------------------------------------------------------------------


def test_report_figures_are_pngs():
    w, h = png_size(viz.plot_dice_distribution([0.2, 0.8, math.nan, 0.9]))
    assert w > 300 and h > 150
    narrow = png_size(viz.plot_per_case(["TCGA_CS_1_2", "TCGA_DU_3_4"], [0.5, math.nan],
                                        ["CS", "DU"]))
    wide = png_size(viz.plot_per_case([f"TCGA_CS_{i}_0" for i in range(80)],
                                      list(np.linspace(0, 1, 80)), ["CS"] * 80))
    assert wide[0] > narrow[0]  # the bar chart widens with the number of patients


def test_gallery_png_has_one_row_per_slice():
    rng = np.random.default_rng(0)
    flair = rng.integers(0, 255, (2, 32, 32), dtype=np.uint8)
    truth = np.zeros((2, 32, 32), np.uint8)
    truth[:, 8:16, 8:16] = 1
    pred = np.roll(truth, 3, axis=2)
    one = png_size(viz.plot_gallery(flair[:1], truth[:1], pred[:1], ["slice 1"]))
    two = png_size(viz.plot_gallery(flair, truth, pred, ["slice 1", "slice 2"]))
    assert two[1] > 1.6 * one[1] and two[0] == pytest.approx(one[0], rel=0.05)


def test_focus_window_is_a_square_around_the_lesion_inside_the_image():
    mask = np.zeros((256, 256), np.uint8)
    mask[100:110, 120:140] = 1
    y0, y1, x0, x1 = viz.focus_window(mask)
    assert y1 - y0 == x1 - x0 == 96  # small lesion: the minimum side
    assert y0 <= 100 and y1 >= 110 and x0 <= 120 and x1 >= 140
    edge = np.zeros((256, 256), np.uint8)
    edge[0:5, 250:256] = 1
    y0, y1, x0, x1 = viz.focus_window(edge)
    assert (y0, x1) == (0, 256) and y1 - y0 == x1 - x0 == 96
    big = np.zeros((256, 256), np.uint8)
    big[10:240, 30:60] = 1
    assert viz.focus_window(big) == (0, 256, 0, 256)
    assert viz.focus_window(np.zeros((64, 64), np.uint8)) == (0, 64, 0, 64)
