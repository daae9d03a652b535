"""Segmentation metrics, defined once (see docs/metrics.md). Pure functions, no state.

Counts first, then scores (as nnU-Net does): `confusion` counts TP/FP/FN/TN over
any set of pixels, and every score is a function of those counts, so a per-slice
score and a per-patient score (PV-DSC: all slices of a patient pooled on the
native 256x256 grid) are the same formula over different pixels.

Empty cases: when truth and prediction are both empty, Dice, IoU, precision and
recall are NaN (undefined) and such cases are excluded from means - never scored 1.
A prediction on a tumour-free slice or patient is counted as false positives, so
it scores 0.

Every score accepts `Counts` of plain ints (one patient, one slice) or of equal-shape
integer arrays (e.g. one entry per slice, from `slice_confusion`), so the per-slice
path is vectorised without a second definition of any score.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance


@dataclass(frozen=True)
class Counts:
    """True/false positive/negative pixel counts: ints, or integer arrays of one shape."""

    tp: int | np.ndarray
    fp: int | np.ndarray
    fn: int | np.ndarray
    tn: int | np.ndarray

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.tn + other.tn)

    def total(self) -> Counts:
        """Array counts (e.g. per slice) pooled into plain ints."""
        return Counts(*(int(np.sum(getattr(self, k))) for k in ("tp", "fp", "fn", "tn")))


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Pixel counts of two binary arrays of the same shape (any number of dimensions)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    p, t = pred.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return Counts(tp, fp, fn, p.size - tp - fp - fn)


def slice_confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Counts per slice of (S, H, W) binary volumes: a Counts of four (S,) int64 arrays.

    The same counts as `confusion` on each slice, in one vectorised pass.
    """
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (S, H, W) arrays, got {pred.shape} and {truth.shape}")
    p, t = pred.astype(bool), truth.astype(bool)
    tp = np.count_nonzero(p & t, axis=(1, 2)).astype(np.int64)
    fp = np.count_nonzero(p, axis=(1, 2)).astype(np.int64) - tp
    fn = np.count_nonzero(t, axis=(1, 2)).astype(np.int64) - tp
    return Counts(tp, fp, fn, p.shape[1] * p.shape[2] - tp - fp - fn)


def _ratio(num, den):
    """num / den, NaN where den == 0; a float for scalars, an array for arrays."""
    if np.ndim(num) == 0 and np.ndim(den) == 0:
        return num / den if den > 0 else math.nan
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    return np.divide(num, den, out=out, where=den > 0)


def dice(c: Counts) -> float:
    """2TP / (2TP + FP + FN); NaN when both are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def iou(c: Counts) -> float:
    """TP / (TP + FP + FN) (Jaccard); NaN when both are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn)


def precision(c: Counts) -> float:
    """TP / (TP + FP) (positive predictive value); NaN when nothing is predicted."""
    return _ratio(c.tp, c.tp + c.fp)


def recall(c: Counts) -> float:
    """TP / (TP + FN) (sensitivity); NaN when there is no tumour in the truth."""
    return _ratio(c.tp, c.tp + c.fn)


def pixel_accuracy(c: Counts) -> float:
    """(TP + TN) / all pixels. Always defined, and close to 1 for any sensible model,
    because background dominates; reported because the seed project did, not as a headline."""
    return _ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI) in pixels (or mm with spacing).

    pred, truth: (S, H, W) or (H, W) binary. NaN when either is empty (undefined).
    """
    if not pred.any() or not truth.any():
        return math.nan
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
    with warnings.catch_warnings():  # MONAI warns about its own internal, deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(to_tensor(pred), to_tensor(truth),
                                           include_background=True, percentile=95,
                                           spacing=spacing)
    return float(value.reshape(-1)[0])


def case_metrics(pred: np.ndarray, truth: np.ndarray, with_hd95: bool = True,
                 spacing: tuple[float, float, float] | None = None) -> dict:
    """Scores of one patient volume: pred, truth (S, H, W) binary on the native grid.

    HD95 is in voxels, or in mm when `spacing` (slice, row, column) is known (NIfTI input).
    """
    c = confusion(pred, truth)
    return {
        "dice": dice(c), "iou": iou(c), "precision": precision(c), "recall": recall(c),
        "pixel_accuracy": pixel_accuracy(c),
        "hd95": hd95(pred, truth, spacing) if with_hd95 else math.nan,
        "volume_true": c.tp + c.fn, "volume_pred": c.tp + c.fp,
        "abs_volume_diff": abs(c.fp - c.fn), "slices": int(pred.shape[0]),
    }


def slice_counts(pred: np.ndarray, truth: np.ndarray) -> list[Counts]:
    """Per-slice counts of (S, H, W) volumes."""
    return [confusion(p, t) for p, t in zip(pred, truth, strict=True)]


def slice_detection(c: Counts) -> dict:
    """Slice-level detection from per-slice counts ((S,) arrays).

    A slice is positive when it has any tumour pixel: in the truth when TP + FN > 0, in
    the prediction when TP + FP > 0. Returns slice counts {"tp", "fp", "fn", "tn"}.
    """
    p = (np.asarray(c.tp) + np.asarray(c.fp)) > 0
    t = (np.asarray(c.tp) + np.asarray(c.fn)) > 0
    return {"tp": int((p & t).sum()), "fp": int((p & ~t).sum()),
            "fn": int((~p & t).sum()), "tn": int((~p & ~t).sum())}


def detection(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Slice-level detection (tumour present or not) over (S, H, W) volumes or stacks of them."""
    return slice_detection(slice_confusion(pred, truth))


def detection_scores(d: dict) -> dict:
    """Sensitivity TP / (TP + FN) and specificity TN / (TN + FP) of slice detection counts."""
    return {"sensitivity": _ratio(d["tp"], d["tp"] + d["fn"]),
            "specificity": _ratio(d["tn"], d["tn"] + d["fp"]), **d}


def summarize(values: list[float], rng: np.random.Generator | None = None,
              n_boot: int = 2000) -> dict:
    """Mean, median, std, count and 95% bootstrap CI of the mean, ignoring NaN (empty cases).

    std is the population standard deviation (ddof=0). CI: percentile bootstrap - the
    mean of `n_boot` resamples (with replacement, same size) of the defined values; the
    2.5th and 97.5th percentiles of those means. Seeded by `rng` (default seed 0), so a
    report is reproducible.
    """
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0,
                "ci95": [math.nan, math.nan]}
    rng = rng or np.random.default_rng(0)
    boots = rng.choice(v, size=(n_boot, v.size), replace=True).mean(axis=1)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "n": int(v.size), "ci95": [float(np.percentile(boots, 2.5)),
                                       float(np.percentile(boots, 97.5))]}
