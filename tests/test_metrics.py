"""Metrics on hand-computed examples, including the empty-case rules (docs/metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gliomaseg import metrics
from gliomaseg.metrics import Counts

# 3 x 4 example. Truth has 3 pixels, prediction 3; they share 2.
#   truth      pred
#   1 1 0 0    1 1 0 0
#   1 0 0 0    0 0 0 0
#   0 0 0 0    0 0 1 0
TRUTH = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
PRED = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.uint8)


def test_confusion_counts_by_hand():
    assert metrics.confusion(PRED, TRUTH) == Counts(tp=2, fp=1, fn=1, tn=8)


def test_scores_by_hand():
    c = metrics.confusion(PRED, TRUTH)
    assert metrics.dice(c) == pytest.approx(4 / 6)  # 2*2 / (2*2 + 1 + 1)
    assert metrics.iou(c) == pytest.approx(2 / 4)  # 2 / (2 + 1 + 1)
    assert metrics.precision(c) == pytest.approx(2 / 3)
    assert metrics.recall(c) == pytest.approx(2 / 3)
    assert metrics.pixel_accuracy(c) == pytest.approx(10 / 12)


def test_asymmetric_precision_and_recall():
    # Truth 4 pixels, prediction 2 of them plus 1 outside: tp 2, fp 1, fn 2, tn 11 (4x4).
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :2] = 1
    pred[3, 3] = 1
    c = metrics.confusion(pred, truth)
    assert c == Counts(2, 1, 2, 11)
    assert metrics.precision(c) == pytest.approx(2 / 3)
    assert metrics.recall(c) == pytest.approx(2 / 4)
    assert metrics.dice(c) == pytest.approx(4 / 7)
    assert metrics.iou(c) == pytest.approx(2 / 5)
    assert metrics.pixel_accuracy(c) == pytest.approx(13 / 16)


def test_both_empty_is_undefined_not_one():
    empty = np.zeros((2, 5, 5), np.uint8)
    c = metrics.confusion(empty, empty)
    assert c == Counts(0, 0, 0, 50)
    for score in (metrics.dice, metrics.iou, metrics.precision, metrics.recall):
        assert math.isnan(score(c)), score.__name__
    assert metrics.pixel_accuracy(c) == 1.0


def test_false_positive_on_tumour_free_volume_scores_zero():
    truth = np.zeros((2, 5, 5), np.uint8)
    pred = truth.copy()
    pred[1, 2, 2:5] = 1  # 3 false-positive pixels
    c = metrics.confusion(pred, truth)
    assert c == Counts(0, 3, 0, 47)
    assert metrics.dice(c) == 0.0 and metrics.iou(c) == 0.0 and metrics.precision(c) == 0.0
    assert math.isnan(metrics.recall(c))  # no tumour to find


def test_missed_tumour_scores_zero():
    truth = np.zeros((5, 5), np.uint8)
    truth[1:3, 1:3] = 1
    c = metrics.confusion(np.zeros_like(truth), truth)
    assert c == Counts(0, 0, 4, 21)
    assert metrics.dice(c) == 0.0 and metrics.recall(c) == 0.0
    assert math.isnan(metrics.precision(c))


def test_perfect_prediction():
    c = metrics.confusion(TRUTH, TRUTH)
    assert metrics.dice(c) == 1.0 and metrics.iou(c) == 1.0 and metrics.pixel_accuracy(c) == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        metrics.slice_confusion(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


def test_pv_dsc_pools_slices_and_differs_from_mean_slice_dice():
    # Slice 0: truth 4 px predicted exactly. Slice 1: tumour-free, 1 false-positive pixel.
    # Slice 2: both empty (excluded from slice means).
    truth = np.zeros((3, 4, 4), np.uint8)
    truth[0, :2, :2] = 1
    pred = truth.copy()
    pred[1, 3, 3] = 1
    volume = metrics.confusion(pred, truth)
    assert volume == Counts(4, 1, 0, 43)
    assert metrics.dice(volume) == pytest.approx(8 / 9)  # PV-DSC
    per_slice = metrics.dice(metrics.slice_confusion(pred, truth))
    assert per_slice[0] == 1.0 and per_slice[1] == 0.0 and math.isnan(per_slice[2])
    assert np.nanmean(per_slice) == pytest.approx(0.5)  # FP slice counts, empty slice does not


def test_slice_confusion_matches_confusion_per_slice_and_pools_to_volume():
    rng = np.random.default_rng(3)
    pred = (rng.random((5, 7, 6)) > 0.6).astype(np.uint8)
    truth = (rng.random((5, 7, 6)) > 0.7).astype(np.uint8)
    pred[2] = 0
    truth[2] = 0  # an empty-empty slice
    per = metrics.slice_confusion(pred, truth)
    assert per.tp.shape == (5,)
    for i in range(5):
        one = metrics.confusion(pred[i], truth[i])
        assert (per.tp[i], per.fp[i], per.fn[i], per.tn[i]) == (one.tp, one.fp, one.fn, one.tn)
        expected = metrics.dice(one)
        got = metrics.dice(per)[i]
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)
    assert per.total() == metrics.confusion(pred, truth)


def test_counts_add():
    assert Counts(1, 2, 3, 4) + Counts(10, 20, 30, 40) == Counts(11, 22, 33, 44)


def test_scalar_scores_are_python_floats():
    assert isinstance(metrics.dice(Counts(1, 1, 0, 5)), float)
    assert isinstance(metrics.dice(Counts(0, 0, 0, 5)), float)


# --- HD95 (MONAI) ---------------------------------------------------------------------------


def test_hd95_single_points_is_their_distance():
    pred = np.zeros((8, 8), np.uint8)
    truth = np.zeros((8, 8), np.uint8)
    pred[0, 0] = 1
    truth[3, 4] = 1
    assert metrics.hd95(pred, truth) == pytest.approx(5.0)  # 3-4-5 triangle


def test_hd95_takes_the_95th_percentile_not_the_maximum():
    # truth: one pixel at (0, 0); pred: (0, 0) and (0, 10). Distances pred->truth [0, 10], whose
    # 95th percentile (linear interpolation) is 9.5; truth->pred [0]. Symmetric: max(9.5, 0).
    pred = np.zeros((3, 12), np.uint8)
    truth = np.zeros((3, 12), np.uint8)
    truth[0, 0] = 1
    pred[0, 0] = pred[0, 10] = 1
    assert metrics.hd95(pred, truth) == pytest.approx(9.5)


def test_hd95_in_3d_counts_a_slice_step_as_one_voxel_and_honours_spacing():
    pred = np.zeros((4, 6, 6), np.uint8)
    truth = np.zeros((4, 6, 6), np.uint8)
    pred[0, 2, 2] = 1
    truth[3, 2, 2] = 1
    assert metrics.hd95(pred, truth) == pytest.approx(3.0)
    assert metrics.hd95(pred, truth, spacing=(2.5, 1.0, 1.0)) == pytest.approx(7.5)


def test_hd95_identical_is_zero_and_empty_is_nan():
    truth = np.zeros((2, 6, 6), np.uint8)
    truth[:, 1:4, 1:4] = 1
    assert metrics.hd95(truth, truth) == 0.0
    assert math.isnan(metrics.hd95(np.zeros_like(truth), truth))
    assert math.isnan(metrics.hd95(truth, np.zeros_like(truth)))


# --- per-case bundle, detection, summaries ---------------------------------------------------


def test_case_metrics_volumes_and_fields():
    truth = np.zeros((3, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 voxels
    pred = np.zeros_like(truth)
    pred[0, :2, :1] = 1  # 2 of them
    pred[2, 3, 0:3] = 1  # plus 3 false positives
    m = metrics.case_metrics(pred, truth)
    assert m["volume_true"] == 4 and m["volume_pred"] == 5 and m["abs_volume_diff"] == 1
    assert m["slices"] == 3
    assert m["dice"] == pytest.approx(4 / 9)  # 2*2 / (4 + 3 + 2)
    assert m["precision"] == pytest.approx(2 / 5) and m["recall"] == pytest.approx(2 / 4)
    assert m["pixel_accuracy"] == pytest.approx(43 / 48)
    assert m["hd95"] > 0
    assert math.isnan(metrics.case_metrics(pred, truth, with_hd95=False)["hd95"])


def test_slice_detection_by_hand():
    # Slices: (truth present, pred present) = (1,1), (1,0), (0,1), (0,0), (1,1).
    truth = np.zeros((5, 3, 3), np.uint8)
    pred = np.zeros((5, 3, 3), np.uint8)
    truth[[0, 1, 4], 1, 1] = 1
    pred[0, 0, 0] = 1  # positive but not overlapping: still a detected slice
    pred[2, 2, 2] = 1
    pred[4, 1, 1] = 1
    d = metrics.detection(pred, truth)
    assert d == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    s = metrics.detection_scores(d)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(1 / 2)
    assert metrics.slice_detection(metrics.slice_confusion(pred, truth)) == d


def test_detection_without_negative_slices_has_undefined_specificity():
    s = metrics.detection_scores({"tp": 3, "fp": 0, "fn": 1, "tn": 0})
    assert s["sensitivity"] == 0.75 and math.isnan(s["specificity"])


def test_summarize_by_hand_ignores_nan():
    s = metrics.summarize([1.0, 2.0, 3.0, 4.0, math.nan])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(1.25))  # population std: mean of squares 1.25
    lo, hi = s["ci95"]
    assert 1.0 <= lo < 2.5 < hi <= 4.0


def test_summarize_bootstrap_is_seeded_and_degenerate_cases():
    values = [0.2, 0.9, 0.5, 0.7, 0.1, 0.8]
    assert metrics.summarize(values) == metrics.summarize(values)
    other = metrics.summarize(values, np.random.default_rng(1))
    assert other["ci95"] != metrics.summarize(values)["ci95"]
    assert metrics.summarize([0.6, 0.6, 0.6])["ci95"] == [0.6, 0.6]
    empty = metrics.summarize([math.nan, math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["ci95"][0])


def test_bootstrap_ci_narrows_with_more_patients():
    rng = np.random.default_rng(0)
    few = metrics.summarize(rng.uniform(0, 1, 10).tolist())
    many = metrics.summarize(rng.uniform(0, 1, 400).tolist())
    assert many["ci95"][1] - many["ci95"][0] < few["ci95"][1] - few["ci95"][0]


masks = arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
               elements=st.integers(0, 1))


@settings(max_examples=60, deadline=None)
@given(masks, st.data())
def test_score_identities_hold_for_any_masks(pred, data):
    truth = data.draw(arrays(np.uint8, pred.shape, elements=st.integers(0, 1)))
    c = metrics.confusion(pred, truth)
    assert c.tp + c.fp + c.fn + c.tn == pred.size
    d, j = metrics.dice(c), metrics.iou(c)
    if pred.any() or truth.any():
        assert 0.0 <= j <= d <= 1.0
        assert d == pytest.approx(2 * j / (1 + j))  # Dice and IoU are monotone transforms
    else:
        assert math.isnan(d) and math.isnan(j)
    assert metrics.slice_confusion(pred, truth).total() == c
    assert metrics.dice(metrics.confusion(truth, pred)) == pytest.approx(d, nan_ok=True)
