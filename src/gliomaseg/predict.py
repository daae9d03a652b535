"""`gliomaseg predict`: segment slices, patient folders or a dataset root, and write the results.

Outputs in OUT (formats in docs/formats.md):
  <case>/<case>_<n>_mask.tif     per slice, 0/255 uint8 on the native grid (Kaggle naming)
  <case>/<case>_<n>_overlay.png  per slice, FLAIR in gray with the prediction in colour
  <case>.nii.gz                  per patient, uint8 0/1, axes (row, column, slice)
  <case>.json                    sidecar: axis order, spacing, source files, model
  predictions.csv                one row per patient
A NIfTI input (.nii/.nii.gz, see nifti.py) gets the same outputs, but its <case>.nii.gz
shares the input's voxel grid and header (affine, orientation, voxel size), and <n> is the
voxel index along the axis the slices cut across. Masks found in the input are ignored.
A file that cannot be read is reported and skipped; everything else is still processed.
Nothing is written into the input.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from PIL import Image
from tqdm import tqdm

from . import __version__
from .config import PostConfig
from .data import IMAGE_SUFFIXES, DataError, find_patients, list_slices, read_image, write_slice
from .nifti import describe, is_nifti, read_nifti, write_mask

if TYPE_CHECKING:  # torch is imported only once there is something to predict
    from .inference import Segmenter
    from .nifti import NiftiVolume

CSV_FIELDS = ["case", "slices", "tumour_slices", "tumour_pixels", "tumour_volume_voxels",
              "tumour_volume_mm3", "max_probability", "skipped_files", "seconds"]
HANDFUL = 5  # no progress bar for this many slices or fewer
FILE_RE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)(?P<mask>_mask)?$")
AXIS_ORDER = ["row (image y, top to bottom)", "column (image x, left to right)",
              "slice (ascending slice number)"]


@dataclass
class Job:
    """One unit of prediction: a patient folder, or a single slice file (a 1-slice volume)."""

    case: str
    numbers: list[int | None]  # slice numbers; None for a file without a _<n> suffix
    paths: list[Path]
    volume: NiftiVolume | None = None  # a NIfTI input, read by `plan`; paths is [its file]


def single_file_job(path: Path) -> Job:
    """A slice file given on its own: case and number from `<case>_<n>.<ext>` when it fits."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: not a slice image (expected {', '.join(IMAGE_SUFFIXES)})")
    m = FILE_RE.match(path.stem)
    if m and m["mask"]:
        raise DataError(f"{path}: is a mask; pass the image {m['case']}_{m['n']}{path.suffix}")
    if m:
        return Job(m["case"], [int(m["n"])], [path])
    return Job(path.stem, [None], [path])


def plan(source: Path) -> tuple[list[Job], list[str]]:
    """Jobs for INPUT (a slice file, a patient folder or a dataset root) and problem lines.

    A missing or empty INPUT raises DataError; a broken patient folder among good
    ones is a problem line and is skipped.
    """
    source = Path(source)
    if source.is_file():
        return [nifti_job(source) if is_nifti(source) else single_file_job(source)], []
    jobs, problems = [], []
    for folder in find_patients(source):
        try:
            numbers, paths, _masks = list_slices(folder)  # masks are ignored
        except DataError as exc:
            problems.append(str(exc))
            continue
        jobs.append(Job(folder.name, list(numbers), paths))
    return jobs, problems


def nifti_job(path: Path) -> Job:
    """A NIfTI volume, read completely now: a corrupt file fails before anything is written."""
    volume = read_nifti(path)
    return Job(volume.patient.case, list(volume.patient.slice_numbers), [path], volume=volume)


def slice_name(case: str, number: int | None) -> str:
    return case if number is None else f"{case}_{number}"


def read_job(job: Job) -> tuple[np.ndarray | None, list[int], list[str]]:
    """(S, H, W, 3) uint8 of the readable slices, their indices in the job, and problem lines.

    Slices whose size differs from the first readable one are skipped too, since a
    patient volume needs one grid.
    """
    images, kept, problems = [], [], []
    for i, path in enumerate(job.paths):
        try:
            image = read_image(path)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if images and image.shape != images[0].shape:
            problems.append(f"{path}: shape {image.shape[:2]} differs from {images[0].shape[:2]} "
                            "in the same patient")
            continue
        images.append(image)
        kept.append(i)
    return (np.stack(images) if images else None), kept, problems


def summary_row(case: str, mask: np.ndarray, probs: np.ndarray,
                spacing: tuple[float, float, float] | None, skipped: int,
                seconds: float) -> dict:
    """One predictions.csv row; the mm^3 volume only when the voxel spacing is known."""
    voxels = int(mask.sum())
    return {
        "case": case,
        "slices": int(mask.shape[0]),
        "tumour_slices": int(mask.reshape(mask.shape[0], -1).any(axis=1).sum()),
        "tumour_pixels": voxels,
        "tumour_volume_voxels": voxels,
        "tumour_volume_mm3": "" if spacing is None else round(voxels * math.prod(spacing), 3),
        "max_probability": round(float(probs.max()), 4) if probs.size else 0.0,
        "skipped_files": skipped,
        "seconds": round(seconds, 3),
    }


def write_nifti(path: Path, mask: np.ndarray,
                spacing: tuple[float, float, float] | None) -> np.ndarray:
    """(S, H, W) {0,1} -> NIfTI-1 with data (H, W, S) uint8 and affine diag(spacing, 1).

    Unit spacing (units unknown) when no spacing is given: the Kaggle slices carry
    none. Returns the affine written.
    """
    affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(mask.transpose(1, 2, 0), dtype=np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units(xyz="mm" if spacing else "unknown")
    nib.save(img, str(path))
    return affine


def sidecar(job: Job, kept: list[int], mask: np.ndarray, spacing, affine: np.ndarray,
            problems: list[str], model: Segmenter, post: PostConfig) -> dict:
    """The JSON beside each NIfTI: how to read it and where every slice came from."""
    slices = [{"index": k, "number": job.numbers[i], "source": str(job.paths[i].resolve()),
               "mask": f"{job.case}/{slice_name(job.case, job.numbers[i])}_mask.tif"}
              for k, i in enumerate(kept)]
    return {
        "case": job.case,
        "nifti": f"{job.case}.nii.gz",
        "shape": [int(mask.shape[1]), int(mask.shape[2]), int(mask.shape[0])],
        "axis_order": AXIS_ORDER,
        "values": "uint8: 1 = predicted tumour (FLAIR abnormality), 0 = background",
        "spacing_mm": list(spacing) if spacing else None,
        "spacing_note": "given with --spacing" if spacing else
                        "unknown: unit spacing written (the input slices carry no spacing)",
        "affine": affine.tolist(),
        "slices": slices,
        "skipped": problems,
        "model": {"source": str(model.source) if model.source else None,
                  "backend": model.backend, "post": dataclasses.asdict(post)},
        "gliomaseg_version": __version__,
    }


def write_slice_outputs(folder: Path, job: Job, kept: list[int], image: np.ndarray,
                        mask: np.ndarray) -> None:
    """Per slice: the 0/255 mask TIFF and the overlay PNG."""
    from .preprocess import FLAIR
    from .viz import overlay_rgb

    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(kept):
        name = slice_name(job.case, job.numbers[i])
        write_slice(folder / f"{name}_mask.tif", (mask[k] * 255).astype(np.uint8))
        Image.fromarray(overlay_rgb(image[k, ..., FLAIR], mask[k])).save(
            folder / f"{name}_overlay.png", format="PNG")


def predict_job(model: Segmenter, job: Job, out: Path, post: PostConfig,
                spacing: tuple[float, float, float] | None) -> tuple[dict | None, list[str]]:
    """Predict one job and write all its outputs; returns (csv row or None, problems)."""
    if job.volume is not None:
        return predict_nifti_job(model, job, out, post), []
    image, kept, problems = read_job(job)
    if image is None:
        return None, [*problems, f"{job.case}: no readable slices, nothing written"]
    start = time.perf_counter()
    result = model.predict(image, post=post)
    write_slice_outputs(out / job.case, job, kept, image, result.mask)
    affine = write_nifti(out / f"{job.case}.nii.gz", result.mask, spacing)
    meta = sidecar(job, kept, result.mask, spacing, affine, problems, model, post)
    (out / f"{job.case}.json").write_text(json.dumps(meta, indent=2))
    row = summary_row(job.case, result.mask, result.probabilities, spacing, len(problems),
                      time.perf_counter() - start)
    return row, problems


def predict_nifti_job(model: Segmenter, job: Job, out: Path, post: PostConfig) -> dict:
    """Predict a NIfTI job: the mask NIfTI gets the input's grid and header; returns the csv row."""
    volume = job.volume
    image = volume.patient.image
    start = time.perf_counter()
    result = model.predict(image, post=post)
    kept = list(range(len(job.numbers)))
    write_slice_outputs(out / job.case, job, kept, image, result.mask)
    write_mask(out / f"{job.case}.nii.gz", result.mask, volume)
    meta = {"case": job.case, "nifti": f"{job.case}.nii.gz", **describe(volume),
            "values": "uint8: 1 = predicted tumour (FLAIR abnormality), 0 = background",
            "slices": [{"index": k, "number": n,
                        "mask": f"{job.case}/{slice_name(job.case, n)}_mask.tif"}
                       for k, n in enumerate(job.numbers)],
            "skipped": [],
            "model": {"source": str(model.source) if model.source else None,
                      "backend": model.backend, "channels": model.cfg.data.channels,
                      "post": dataclasses.asdict(post)},
            "gliomaseg_version": __version__}
    (out / f"{job.case}.json").write_text(json.dumps(meta, indent=2))
    return summary_row(job.case, result.mask, result.probabilities, volume.spacing, 0,
                       time.perf_counter() - start)


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run(model: Segmenter, jobs: list[Job], out: Path, post: PostConfig,
        spacing: tuple[float, float, float] | None = None, progress: bool = True) -> Report:
    """Predict every job into OUT and write predictions.csv; never stops at a bad file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    total = sum(len(j.paths) for j in jobs)
    with tqdm(total=total, unit="slice", disable=not progress or total <= HANDFUL) as bar:
        for job in jobs:
            bar.set_postfix_str(job.case, refresh=False)
            row, problems = predict_job(model, job, out, post, spacing)
            report.problems += problems
            if row is not None:
                report.rows.append(row)
            bar.update(len(job.paths))
    write_csv(out / "predictions.csv", report.rows)
    return report
