"""Read the LGG MRI Segmentation dataset (Kaggle `kaggle_3m` layout) into patient volumes.

Layout: ROOT/TCGA_<site>_<id>_<date>/<case>_<n>.tif (RGB: pre-contrast, FLAIR,
post-contrast) and <case>_<n>_mask.tif (0/255), slices ordered by the integer n;
ROOT/data.csv holds clinical data keyed by `Patient` (TCGA_<site>_<id>).

Conversions (documented in docs/preprocessing.md): a 1-channel image is taken as
FLAIR and copied to all three channels; RGBA drops alpha; 16-bit images are
scaled to 0-255 by their maximum. Sizes other than 256 are kept here and resized
by `preprocess`. Every problem is a `DataError` whose message is one line naming
the file. Nothing here writes to the input folder.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
KAGGLE_HANDLE = "mateuszbuda/lgg-mri-segmentation"
MAX_SIDE = 4096  # refuse images larger than this (decompression bombs, wrong files)
Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE


class DataError(ValueError):
    """Unusable input; the message is one line and names the offending file."""


@dataclass
class Patient:
    """One patient: a volume of S slices in slice order.

    image: (S, H, W, 3) uint8, channels pre-contrast, FLAIR, post-contrast.
    mask: (S, H, W) uint8 in {0, 1}, or None when the folder has no masks.
    """

    case: str
    image: np.ndarray
    mask: np.ndarray | None
    slice_numbers: list[int]
    image_paths: list[Path]
    site: str = "unknown"
    clinical: dict[str, str] = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])


def site_of(case: str) -> str:
    """Site code of a TCGA case id (TCGA_<site>_<id>_<date>), 'unknown' otherwise."""
    parts = case.split("_")
    return parts[1] if len(parts) >= 3 and parts[0] == "TCGA" else "unknown"


def patient_id(case: str) -> str:
    """`data.csv` key of a case: TCGA_CS_4941_19960909 -> TCGA_CS_4941."""
    return "_".join(case.split("_")[:3])


def _load(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF": we report our own line
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max(img.size) > MAX_SIDE:
                    raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, larger than {MAX_SIDE}")
                img.load()
                return np.asarray(img)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt or truncated files
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def read_image(path: Path) -> np.ndarray:
    """One slice as (H, W, 3) uint8, with the conversions in the module docstring."""
    array = _load(Path(path))
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        top = array.max()
        array = (array / top * 255.0 if top > 0 else array).clip(0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 8:
        raise DataError(f"{path}: unexpected image shape {array.shape}")
    return np.ascontiguousarray(array)


def read_mask(path: Path) -> np.ndarray:
    """One mask as (H, W) uint8 in {0, 1}; the file must hold only 0 and 255."""
    array = _load(Path(path))
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise DataError(f"{path}: mask has differing colour channels")
        array = array[..., 0]
    if array.dtype == bool:
        return array.astype(np.uint8)
    values = np.unique(array)
    if not set(values.tolist()) <= {0, 255}:
        shown = ", ".join(str(v) for v in values[:6])
        raise DataError(f"{path}: mask values must be 0 or 255, found {shown}")
    return (array > 0).astype(np.uint8)


def is_patient_dir(path: Path) -> bool:
    return path.is_dir() and any(_slice_files(path))


def _slice_files(folder: Path) -> Iterator[tuple[Path, re.Match]]:
    for p in folder.iterdir():
        if p.is_file() and not p.name.startswith("."):
            m = SLICE_RE.match(p.name)
            if m:
                yield p, m


def find_patients(root: Path) -> list[Path]:
    """Patient folders under a kaggle_3m-style root, or [root] if it is one; sorted by name."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if is_patient_dir(root):
        return [root]
    folders = sorted(p for p in root.iterdir() if is_patient_dir(p))
    if not folders and (root / "kaggle_3m").is_dir():
        return find_patients(root / "kaggle_3m")  # the folder Kaggle's archive unpacks to
    if not folders:
        raise DataError(f"{root}: no patient folders with <case>_<n>.tif slices found")
    return folders


def list_slices(folder: Path) -> tuple[list[int], list[Path], list[Path | None]]:
    """Slice numbers, image paths and mask paths (None where missing), ordered by number."""
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path, m in _slice_files(folder):
        target = masks if m["mask"] else images
        n = int(m["n"])
        if n in target:
            raise DataError(f"{path}: slice number {n} appears twice (also {target[n].name})")
        target[n] = path
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{masks[orphans[0]]}: mask without an image")
    if not images:
        raise DataError(f"{folder}: no slice images")
    numbers = sorted(images)
    return numbers, [images[n] for n in numbers], [masks.get(n) for n in numbers]


def read_patient(folder: Path, require_masks: bool = False,
                 clinical: dict[str, dict[str, str]] | None = None) -> Patient:
    """Read one patient folder. Masks are ignored unless every slice has one.

    `clinical` defaults to the rows of data.csv in the folder's parent, if any.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a patient folder")
    if clinical is None:
        clinical = read_clinical(folder.parent)
    numbers, image_paths, mask_paths = list_slices(folder)
    missing = [image_paths[i] for i, m in enumerate(mask_paths) if m is None]
    if missing and require_masks:
        raise DataError(f"{missing[0]}: no mask ({missing[0].stem}_mask.tif) - needed for training")
    images = [read_image(p) for p in image_paths]
    shape = images[0].shape
    for p, img in zip(image_paths, images, strict=True):
        if img.shape != shape:
            raise DataError(f"{p}: shape {img.shape[:2]} differs from {shape[:2]} in the same patient")
    mask = None
    if not missing:
        masks = [read_mask(m) for m in mask_paths]
        for p, mk in zip(mask_paths, masks, strict=True):
            if mk.shape != shape[:2]:
                raise DataError(f"{p}: mask shape {mk.shape} differs from its image {shape[:2]}")
        mask = np.stack(masks)
    case = folder.name
    return Patient(case=case, image=np.stack(images), mask=mask, slice_numbers=numbers,
                   image_paths=image_paths, site=site_of(case),
                   clinical=clinical.get(patient_id(case), {}))


def read_clinical(root: Path) -> dict[str, dict[str, str]]:
    """Rows of ROOT/data.csv keyed by Patient id; {} when there is no such file."""
    path = Path(root) / "data.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as fh:
            return {row["Patient"]: row for row in csv.DictReader(fh) if row.get("Patient")}
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read clinical table ({exc})") from None


def dataset_root(path: Path) -> Path:
    """The folder holding the patient folders (where data.csv lives)."""
    folders = find_patients(path)
    return folders[0] if folders == [Path(path)] else folders[0].parent


def iter_patients(root: Path, require_masks: bool = False,
                  cases: list[str] | None = None) -> Iterator[Patient]:
    """Read patients one at a time (a whole dataset does not need to fit in memory)."""
    folders = find_patients(root)
    clinical = read_clinical(dataset_root(root))
    if cases is not None:
        by_name = {f.name: f for f in folders}
        unknown = [c for c in cases if c not in by_name]
        if unknown:
            raise DataError(f"{root}: no patient folder {unknown[0]}")
        folders = [by_name[c] for c in cases]
    for folder in folders:
        yield read_patient(folder, require_masks=require_masks, clinical=clinical)


def list_cases(root: Path) -> list[str]:
    return [f.name for f in find_patients(root)]


@dataclass
class CheckReport:
    patients: list[Patient]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.patients) and not self.problems


def check_dataset(root: Path, require_masks: bool = True) -> CheckReport:
    """Read every patient, collecting one line per problem instead of stopping at the first."""
    folders = find_patients(root)
    problems: list[str] = []
    try:
        clinical = read_clinical(dataset_root(root))
    except DataError as exc:
        problems.append(str(exc))
        clinical = {}
    patients = []
    for folder in folders:
        try:
            patients.append(read_patient(folder, require_masks=require_masks, clinical=clinical))
        except DataError as exc:
            problems.append(str(exc))
    return CheckReport(patients=patients, problems=problems)


def missing_sequences(image: np.ndarray) -> list[str]:
    """Sequences of an (S, H, W, 3) volume that are copies of FLAIR, i.e. were missing.

    The Kaggle data fills a missing pre- or post-contrast sequence with FLAIR; models
    see such patients rarely (8 of the 81 development patients), so `check` lists them.
    """
    flair = image[..., 1]
    return [name for c, name in ((0, "pre-contrast"), (2, "post-contrast"))
            if np.array_equal(image[..., c], flair)]


def summarize(patients: list[Patient]) -> dict:
    """Counts for `gliomaseg check`: patients, slices, tumour slices and pixels, sites,
    slices and tumour slices per patient, and the patients whose missing sequences were
    filled with FLAIR."""
    sites: dict[str, int] = {}
    for p in patients:
        sites[p.site] = sites.get(p.site, 0) + 1
    with_mask = [p for p in patients if p.mask is not None]
    tumour = {p.case: int((p.mask.reshape(p.num_slices, -1).max(1) > 0).sum()) for p in with_mask}
    return {
        "patients": len(patients),
        "slices": sum(p.num_slices for p in patients),
        "slices_with_tumour": sum(tumour.values()),
        "tumour_pixels": int(sum(p.mask.sum() for p in with_mask)),
        "patients_with_masks": len(with_mask),
        "sites": dict(sorted(sites.items())),
        "slices_per_patient": {p.case: p.num_slices for p in patients},
        "tumour_slices_per_patient": tumour,
        "missing_sequences": {p.case: m for p in patients if (m := missing_sequences(p.image))},
    }


def write_slice(path: Path, array: np.ndarray) -> None:
    """Write one image (H, W, 3) or mask (H, W) as an uncompressed TIFF, as Kaggle's files are."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="TIFF")


def split_folds(cases: list[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Patient-level k-fold, stratified by site, in nnU-Net's splits_final.json shape.

    Cases of each site are shuffled with `seed` and dealt round-robin to the folds,
    continuing where the previous site stopped, so folds differ in size by at most
    one and every site is spread over the folds. Returns [{"train": [...], "val": [...]}].
    """
    if folds < 2:
        raise DataError(f"--folds must be at least 2, got {folds}")
    if len(cases) < folds:
        raise DataError(f"{len(cases)} patients cannot be split into {folds} folds")
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[str]] = {}
    for case in sorted(cases):
        by_site.setdefault(site_of(case), []).append(case)
    val: list[list[str]] = [[] for _ in range(folds)]
    slot = 0
    for site in sorted(by_site):
        for case in rng.permutation(by_site[site]).tolist():
            val[slot % folds].append(case)
            slot += 1
    return [{"train": sorted(set(cases) - set(v)), "val": sorted(v)} for v in val]


def read_splits(path: Path) -> list[dict[str, list[str]]]:
    """A splits file (`split_folds`' shape, nnU-Net's splits_final.json): a list of folds, each
    {"val": [patients], "train": [patients] (optional)}. DataError if it is not one."""
    try:
        folds = json.loads(Path(path).read_text())
        ok = isinstance(folds, list) and bool(folds) and all(
            isinstance(f, dict) and isinstance(f.get("val"), list)
            and isinstance(f.get("train", []), list)
            and all(isinstance(c, str) for c in f["val"] + f.get("train", [])) for f in folds)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read a splits file ({exc})") from None
    if not ok:
        raise DataError(f'{path}: not a splits file (a list of {{"train": [...], "val": [...]}})')
    return folds


def pair_fold(folds: list[dict[str, list[str]]], left_out: tuple[int, int]) -> dict[str, list[str]]:
    """One fold trained without two folds of `folds`, for a nested cross-validation of an ensemble.

    Validation is the two left-out folds together; training is every other fold. In a nested
    cross-validation of the fold ensemble, outer fold k's ensemble has one network per other
    fold j, trained on every fold but j and k: the pair (j, k) trains the same network for
    outer folds j and k alike, so n folds need n(n-1)/2 networks instead of n(n-1). Its
    validation patients only log progress: the ensemble takes each network's last epoch,
    since choosing an epoch on fold j or k would leak the patients it later scores.
    """
    j, k = left_out
    if len(folds) < 3 or j == k or not (0 <= j < len(folds) and 0 <= k < len(folds)):
        raise DataError(f"folds {j} and {k} of {len(folds)}: need two different fold indices "
                        "of at least 3 folds")
    out = {j, k}
    return {"train": sorted(c for i, f in enumerate(folds) if i not in out for c in f["val"]),
            "val": sorted(c for i in sorted(out) for c in folds[i]["val"])}


def download_dataset(dest: Path, kagglehub=None) -> Path:
    """Fetch the Kaggle dataset into DEST with kagglehub; returns the kaggle_3m root.

    `kagglehub` is injectable so that tests can pass a fake (this machine is offline).
    """
    if kagglehub is None:
        try:
            import kagglehub
        except ImportError:
            raise DataError("kagglehub is not installed: pip install 'gliomaseg[download]'") from None
    try:
        path = Path(kagglehub.dataset_download(KAGGLE_HANDLE, output_dir=str(dest)))
    except Exception as exc:  # kagglehub raises its own types for auth and network errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"download of {KAGGLE_HANDLE} failed ({reason}). Check your network and Kaggle "
            "credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY), or download "
            f"it by hand from kaggle.com/datasets/{KAGGLE_HANDLE} and unzip it") from None
    return dataset_root(path)

