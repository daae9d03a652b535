"""Segmentation results kept by the web app: numbers, slice pictures and downloads.

A result lives in memory only (no patient pixels on disk) and expires after a
configurable time. Everything here is a pure function of a `Result`, so the
routes in app.py stay thin.
"""

from __future__ import annotations

import io
import math
import secrets
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..data import write_slice
from ..metrics import confusion, dice, slice_counts
from ..nifti import NiftiVolume, write_mask

NOTICE = "Research use only. Not a medical device; not for diagnosis or treatment decisions."
CHANNELS = {"pre": 0, "flair": 1, "post": 2}  # Kaggle RGB order: pre-contrast, FLAIR, post
PREDICTION_RGB = (255, 92, 56)
TRUTH_RGB = (64, 224, 160)


@dataclass
class Result:
    """image (S, H, W, 3) uint8; mask and truth (S, H, W) uint8 {0,1}; spacing in mm or None.

    volume: the NIfTI upload's header and orientation, so its mask download lands on its grid.
    """

    id: str
    case: str
    image: np.ndarray
    mask: np.ndarray
    truth: np.ndarray | None
    slice_numbers: list[int]
    seconds: float
    pixel_mm: float | None = None
    slice_mm: float | None = None
    notes: list[str] = field(default_factory=list)
    created: float = 0.0
    volume: NiftiVolume | None = None

    @property
    def num_slices(self) -> int:
        return int(self.mask.shape[0])


def new_id() -> str:
    """Unguessable: the id is the only key to someone's scan on a shared server."""
    return secrets.token_urlsafe(16)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)


def stats(r: Result) -> dict:
    """Tumour area per slice, volume per patient (voxels; mm^3 with spacing) and Dice vs truth.

    Dice uses gliomaseg.metrics, so it is the PV-DSC of `evaluate`; it is null
    when prediction and truth are both empty (undefined, not 1).
    """
    area = r.mask.reshape(r.num_slices, -1).sum(1).astype(int)
    voxels = int(area.sum())
    out = {
        "id": r.id, "case": r.case, "slices": r.num_slices, "shape": list(r.mask.shape[1:]),
        "slice_numbers": r.slice_numbers, "seconds": round(r.seconds, 3), "notes": r.notes,
        "pixel_mm": r.pixel_mm, "slice_mm": r.slice_mm,
        "area_px": area.tolist(),
        "area_mm2": ([round(a * r.pixel_mm**2, 2) for a in area.tolist()]
                     if r.pixel_mm else None),
        "tumour_slices": np.flatnonzero(area).tolist(),
        "volume_voxels": voxels,
        "volume_mm3": (round(voxels * r.pixel_mm**2 * r.slice_mm, 1)
                       if r.pixel_mm and r.slice_mm else None),
        "has_truth": r.truth is not None, "notice": NOTICE,
    }
    if r.truth is not None:
        truth_area = r.truth.reshape(r.num_slices, -1).sum(1).astype(int)
        out.update({
            "dice": _finite(dice(confusion(r.mask, r.truth))),
            "slice_dice": [_finite(dice(c)) for c in slice_counts(r.mask, r.truth)],
            "truth_area_px": truth_area.tolist(),
            "truth_slices": np.flatnonzero(truth_area).tolist(),
            "truth_volume_voxels": int(truth_area.sum()),
        })
    return out


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def slice_png(r: Result, index: int, channel: str) -> bytes:
    """One slice: a single channel as grayscale, or the Kaggle RGB composite ('rgb')."""
    img = r.image[index]
    return png(img if channel == "rgb" else img[..., CHANNELS[channel]])


def _rgba(where: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros((*where.shape, 4), dtype=np.uint8)
    out[where] = (*rgb, 255)
    return out


def prediction_png(r: Result, index: int) -> bytes:
    """Predicted tumour as an opaque fill on transparency; the page sets its opacity."""
    return png(_rgba(r.mask[index] > 0, PREDICTION_RGB))


def truth_png(r: Result, index: int) -> bytes:
    """Ground-truth outline (the mask minus its erosion) on transparency."""
    m = r.truth[index] > 0
    return png(_rgba(m & ~ndimage.binary_erosion(m), TRUTH_RGB))


def masks_zip(r: Result) -> bytes:
    """Predicted masks as <case>_<n>_mask.tif (0/255), as in the Kaggle dataset."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, mask in zip(r.slice_numbers, r.mask, strict=True):
            tif = io.BytesIO()
            write_slice(tif, mask * np.uint8(255))
            zf.writestr(f"{r.case}/{r.case}_{n}_mask.tif", tif.getvalue())
    return buf.getvalue()


def nifti_gz(r: Result, workdir: Path) -> bytes:
    """Predicted mask as gzipped NIfTI bytes, the same file as `gliomaseg predict` writes, in
    a private `workdir`: for a NIfTI upload, on its voxel grid with its header; otherwise
    data (row, column, slice) uint8 {0,1}, with spacing only when both pixel size and
    slice thickness were given.
    """
    from ..predict import write_nifti

    path = workdir / "mask.nii.gz"
    if r.volume is not None:
        write_mask(path, r.mask, r.volume)
    else:
        spacing = (r.pixel_mm, r.pixel_mm, r.slice_mm) if r.pixel_mm and r.slice_mm else None
        write_nifti(path, r.mask, spacing)
    return path.read_bytes()


def header_spacing(volume: NiftiVolume) -> tuple[float, float]:
    """(pixel_mm, slice_mm) from a NIfTI header. Results hold one in-plane size, so the
    geometric mean of row and column size is used: it keeps areas exact."""
    row, col, depth = volume.spacing
    return math.sqrt(row * col), depth


class ResultStore:
    """Results by id, thread-safe, dropped after `ttl` seconds or when more than `capacity`."""

    def __init__(self, ttl: float, capacity: int, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.capacity, self.clock = ttl, capacity, clock
        self._items: dict[str, Result] = {}
        self._lock = threading.Lock()

    def add(self, result: Result) -> None:
        with self._lock:
            result.created = self.clock()
            self._items[result.id] = result
            while len(self._items) > self.capacity:  # dicts keep insertion order: oldest first
                self._items.pop(next(iter(self._items)))

    def get(self, rid: str) -> Result | None:
        self.sweep()
        with self._lock:
            return self._items.get(rid)

    def remove(self, rid: str) -> bool:
        with self._lock:
            return self._items.pop(rid, None) is not None

    def sweep(self) -> int:
        """Drop expired results; returns how many were dropped."""
        now = self.clock()
        with self._lock:
            old = [k for k, r in self._items.items() if now - r.created > self.ttl]
            for k in old:
                del self._items[k]
        return len(old)

    def expires_in(self, result: Result) -> float:
        return max(0.0, self.ttl - (self.clock() - result.created))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
