"""Synthetic brain-MRI phantoms written in the exact Kaggle `kaggle_3m` layout.

Tests, `make demo` and the notebook use these so that everything runs without the
real data. Each case is an ellipsoidal "brain" with a dark ventricle and smooth
texture in three channels (pre-contrast, FLAIR, post-contrast) and one
FLAIR-bright, irregular tumour spanning neighbouring slices; the end slices of
every volume are tumour-free, as in the real data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from .data import write_slice

SITES = ("CS", "DU", "EZ", "FG", "HT")
CLINICAL_COLUMNS = ["Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster",
                    "RPPACluster", "OncosignCluster", "COCCluster", "histological_type",
                    "neoplasm_histologic_grade", "tumor_tissue_site", "laterality",
                    "tumor_location", "gender", "age_at_initial_pathologic", "race",
                    "ethnicity", "death01"]


def case_name(index: int) -> str:
    """TCGA-style name; the 'SY' id marks a synthetic case."""
    site = SITES[index % len(SITES)]
    return f"TCGA_{site}_SY{index:02d}_{20000101 + index * 100}"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-8)


def make_case(rng: np.random.Generator, slices: int = 24, size: int = 256
              ) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: image (S, size, size, 3) uint8 and mask (S, size, size) uint8 in {0, 255}."""
    z, y, x = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size),
                          np.linspace(-1, 1, size), indexing="ij")
    ry, rx = rng.uniform(0.62, 0.78), rng.uniform(0.5, 0.65)
    brain = (y / ry) ** 2 + (x / rx) ** 2 + (z / 1.15) ** 2 < 1.0
    ventricle = ((y + 0.05) / 0.18) ** 2 + (x / 0.08) ** 2 + (z / 0.5) ** 2 < 1.0

    # Tumour: an ellipsoid with a noisy boundary, inside the brain, spanning ~6-12 slices.
    cz = rng.uniform(-0.35, 0.35)
    cy, cx = rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.3)
    rz, rty, rtx = rng.uniform(0.25, 0.45), rng.uniform(0.1, 0.22), rng.uniform(0.1, 0.22)
    distance = ((z - cz) / rz) ** 2 + ((y - cy) / rty) ** 2 + ((x - cx) / rtx) ** 2
    distance = distance + 0.35 * _smooth_noise(rng, distance.shape, sigma=(1, 6, 6))
    tumour = (distance < 1.0) & brain & ~ventricle

    texture = _smooth_noise(rng, brain.shape, sigma=(0.7, 3, 3))
    contrast = {  # (brain, ventricle, tumour) mean intensity per channel
        "pre": (95, 40, 85), "flair": (105, 35, 185), "post": (100, 45, 120),
    }
    channels = []
    for brain_v, vent_v, tum_v in contrast.values():
        img = np.where(brain, brain_v + 12 * texture, 0.0)
        img = np.where(ventricle & brain, vent_v, img)
        img = np.where(tumour, tum_v + 10 * texture, img)
        img = ndimage.gaussian_filter(img, (0, 1.0, 1.0)) + rng.normal(0, 4, img.shape) * brain
        channels.append(img)
    image = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return image, tumour.astype(np.uint8) * 255


def write_dataset(out: Path, cases: int = 6, seed: int = 0, slices: int = 24,
                  size: int = 256) -> Path:
    """Write `cases` phantoms under OUT/kaggle_3m/ with data.csv; returns the kaggle_3m root."""
    rng = np.random.default_rng(seed)
    root = Path(out) / "kaggle_3m"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cases):
        case = case_name(i)
        folder = root / case
        folder.mkdir(exist_ok=True)
        image, mask = make_case(rng, slices=slices, size=size)
        for n in range(slices):
            write_slice(folder / f"{case}_{n + 1}.tif", image[n])
            write_slice(folder / f"{case}_{n + 1}_mask.tif", mask[n])
        rows.append([case.rsplit("_", 1)[0]] + [str(int(rng.integers(1, 4)))
                                                for _ in CLINICAL_COLUMNS[1:]])
    with (root / "data.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CLINICAL_COLUMNS)
        writer.writerows(rows)
    return root
