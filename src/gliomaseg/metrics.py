"""Segmentation metrics, defined once (see docs/metrics.md). Pure functions, no state.

Counts first, then scores (as nnU-Net does): `confusion` counts TP/FP/FN/TN over
any set of pixels, and every score is a function of those counts, so a per-slice
score and a per-patient score (PV-DSC: all slices of a patient pooled on the
native 256x256 grid) are the same formula over different pixels.

Empty cases: when truth and prediction are both empty, Dice, IoU, precision and
recall are NaN (undefined) and such cases are excluded from means - never scored 1.
A prediction on a tumour-free slice or patient is counted as false positives, so
it scores 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.tn + other.tn)


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Pixel counts of two binary arrays of the same shape (any number of dimensions)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    p, t = pred.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return Counts(tp, fp, fn, p.size - tp - fp - fn)


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else math.nan


def dice(c: Counts) -> float:
    """2TP / (2TP + FP + FN); NaN when both are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def iou(c: Counts) -> float:
    """TP / (TP + FP + FN) (Jaccard); NaN when both are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn)


def precision(c: Counts) -> float:
    return _ratio(c.tp, c.tp + c.fp)


def recall(c: Counts) -> float:
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
    value = compute_hausdorff_distance(to_tensor(pred), to_tensor(truth), include_background=True,
                                       percentile=95, spacing=spacing)
    return float(value.reshape(-1)[0])


def case_metrics(pred: np.ndarray, truth: np.ndarray, with_hd95: bool = True) -> dict:
    """Scores of one patient volume: pred, truth (S, H, W) binary on the native grid."""
    c = confusion(pred, truth)
    return {
        "dice": dice(c), "iou": iou(c), "precision": precision(c), "recall": recall(c),
        "pixel_accuracy": pixel_accuracy(c),
        "hd95": hd95(pred, truth) if with_hd95 else math.nan,
        "volume_true": c.tp + c.fn, "volume_pred": c.tp + c.fp,
        "abs_volume_diff": abs(c.fp - c.fn), "slices": int(pred.shape[0]),
    }


def slice_counts(pred: np.ndarray, truth: np.ndarray) -> list[Counts]:
    """Per-slice counts of (S, H, W) volumes."""
    return [confusion(p, t) for p, t in zip(pred, truth, strict=True)]


def detection(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Slice-level detection (tumour present or not) over (S, H, W) volumes or stacks of them."""
    p = pred.reshape(pred.shape[0], -1).any(1)
    t = truth.reshape(truth.shape[0], -1).any(1)
    return {"tp": int((p & t).sum()), "fp": int((p & ~t).sum()),
            "fn": int((~p & t).sum()), "tn": int((~p & ~t).sum())}


def detection_scores(d: dict) -> dict:
    return {"sensitivity": _ratio(d["tp"], d["tp"] + d["fn"]),
            "specificity": _ratio(d["tn"], d["tn"] + d["fp"]), **d}


def summarize(values: list[float], rng: np.random.Generator | None = None,
              n_boot: int = 2000) -> dict:
    """Mean, median, std, count and 95% bootstrap CI of the mean, ignoring NaN (empty cases)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0,
                "ci95": [math.nan, math.nan]}
    rng = rng or np.random.default_rng(0)
    boots = rng.choice(v, size=(n_boot, v.size), replace=True).mean(axis=1)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "n": int(v.size), "ci95": [float(np.percentile(boots, 2.5)),
                                       float(np.percentile(boots, 97.5))]}
