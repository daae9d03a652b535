"""NIfTI volumes (.nii, .nii.gz) in and out: BraTS-style data for `predict` and `evaluate`.

Reading turns a NIfTI image into the project's `Patient` (image (S, H, W, 3) uint8), so it
goes through the same `prepare_volume` and `segment` as the Kaggle slices; writing puts a
mask back on the input's voxel grid with the input's header, so it overlays the input in
any viewer (ITK-SNAP, 3D Slicer, FSLeyes).

Shapes: (X, Y, Z) is FLAIR, copied to all three channels (as `data.read_image` does for a
grayscale slice); (X, Y, Z, 3) is pre-contrast, FLAIR, post-contrast (the Kaggle channel
order); (X, Y, Z, 1) counts as (X, Y, Z). Anything else is a `DataError`.

Orientation: the model was trained on Kaggle slices, which are axial, anterior at the top
(rows run anterior -> posterior), patient's right on the image's left (radiological), and
numbered inferior -> superior. The voxel axes are permuted and flipped with nibabel's
orientation tools (no resampling, so nothing is interpolated) to that orientation, taken
from the affine: for RAS+ or LPS+ data (nibabel, FSL, BraTS) the slices are the third
voxel axis, and a volume stored sagittally or coronally is still cut axially. Oblique
volumes use the nearest axes. Masks are mapped back by the inverse, exactly.

Intensities, per channel: NaN/inf become 0; a negative minimum is shifted to 0; values are
divided by the 99.5th percentile of the voxels above the minimum (a percentile, not the
maximum, because a few hot voxels would squeeze the brain into a few gray levels) and
scaled to 0-255 uint8. `preprocess` re-normalises per volume anyway, so only the dark
background (its brain threshold is 10 of 255) and a sensible gray scale matter here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from .config import CHANNEL_NAMES, DataConfig
from .data import MAX_SIDE, DataError, Patient

SUFFIXES = (".nii.gz", ".nii")
DISPLAY_AXES = ("P", "L", "S")  # rows -> posterior, columns -> patient left, slices -> superior
SCALE_PERCENTILE = 99.5
MAX_VOXELS = 512**3  # per channel; refuse larger volumes (wrong file, or memory)
MIN_SIDE = 8  # as data.read_image
LABEL_NAMES = ("{stem}_mask", "{stem}_seg")  # sibling label files tried for <stem>.nii.gz
MODALITY_RE = re.compile(r"[_-](flair|t2f|t2_flair|t2flair)$", re.IGNORECASE)  # BraTS names
AFFINE_TOLERANCE = 1e-3  # mm; label and image affines must agree to this
UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def is_nifti(path: Path | str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def nifti_stem(path: Path | str) -> str:
    """scan.nii.gz -> scan, scan.nii -> scan."""
    name = Path(path).name
    return next(name[:-len(s)] for s in SUFFIXES if name.lower().endswith(s))


@dataclass
class NiftiVolume:
    """A NIfTI image read for segmentation.

    patient: image (S, H, W, 3) uint8 in the display orientation (module docstring), mask
        (S, H, W) {0, 1} from the labels or None; slice_numbers are the voxel indices
        (0-based) along `slice_axis` of the input.
    header: the input's header; masks are written with it (same affine, qform/sform codes,
        voxel size), so they share the input's grid.
    ornt: nibabel orientation transform from the input's voxel axes to (H, W, S).
    shape: the input's spatial shape (X, Y, Z).
    channels: "flair" for a 3D input, "rgb" for (X, Y, Z, 3).
    scale: per input channel, the value mapped to 255.
    """

    path: Path
    patient: Patient
    header: nib.Nifti1Header
    affine: np.ndarray
    ornt: np.ndarray
    shape: tuple[int, int, int]
    channels: str
    scale: list[float]
    labels: Path | None = None

    @property
    def slice_axis(self) -> int:
        """The input voxel axis the slices are cut across (2 for RAS+ or LPS+ data)."""
        return int(np.flatnonzero(self.ornt[:, 0] == 2)[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, in the model's (row, column, slice) order."""
        zooms = self.zooms_mm
        return tuple(zooms[int(np.flatnonzero(self.ornt[:, 0] == k)[0])] for k in range(3))

    @property
    def zooms_mm(self) -> tuple[float, float, float]:
        """Voxel size in mm along the input's axes (units 'unknown' are taken as mm)."""
        unit = self.header.get_xyzt_units()[0]
        return tuple(float(z) * UNIT_MM.get(unit, 1.0) for z in self.header.get_zooms()[:3])

    def to_input(self, volume: np.ndarray) -> np.ndarray:
        """(S, H, W) in display orientation -> (X, Y, Z) on the input's voxel grid."""
        hws = np.asarray(volume).transpose(1, 2, 0)
        back = ornt_transform(axcodes2ornt(DISPLAY_AXES), io_orientation(self.affine))
        return np.ascontiguousarray(apply_orientation(hws, back))


def _display_ornt(affine: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(affine).all():
        raise DataError(f"{path}: the affine (voxel-to-world matrix) is not finite")
    start = io_orientation(affine)
    if np.isnan(start).any():
        raise DataError(f"{path}: the affine (voxel-to-world matrix) is degenerate")
    return ornt_transform(start, axcodes2ornt(DISPLAY_AXES))


def to_display(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """(X, Y, Z, ...) on the input grid -> (S, H, W, ...) in display orientation."""
    hws = apply_orientation(array, ornt)
    return np.ascontiguousarray(np.moveaxis(hws, 2, 0))


def scale_to_uint8(channel: np.ndarray) -> tuple[np.ndarray, float]:
    """One channel (any shape, float) -> (uint8 0-255, the input value mapped to 255).

    Zero (or a negative minimum) maps to 0 and the 99.5th percentile of the voxels above
    it to 255; see the module docstring for why.
    """
    values = np.nan_to_num(channel.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    floor = min(float(values.min()), 0.0)
    above = values[values > floor]
    if above.size == 0:
        return np.zeros(values.shape, np.uint8), floor
    top = float(np.percentile(above, SCALE_PERCENTILE))
    if top <= floor:  # fewer than 0.5% of voxels above the floor: use the largest
        top = float(above.max())
    scaled = (values - floor) * (255.0 / (top - floor))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), top


def _load(path: Path) -> nib.Nifti1Image:
    """nib.load with every failure as one DataError line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign, empty or corrupt files
        raise DataError(_reason(path, "not a readable NIfTI file", exc)) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def header_shape(path: Path | str) -> tuple[int, ...]:
    """The shape the header declares, unchecked; no voxel data is read.

    For limits stricter than this module's, checked before `read_nifti` reads the voxels.
    """
    return tuple(int(n) for n in _load(Path(path)).shape)


def _reason(path: Path, what: str, exc: Exception) -> str:
    detail = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{path}: {what} ({detail})"


def _spatial_shape(img: nib.Nifti1Image, path: Path, what: str = "image") -> tuple[int, ...]:
    """The image's shape with a trailing singleton dropped, checked for size limits."""
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    expected = ("(X, Y, Z) FLAIR or (X, Y, Z, 3) pre-contrast/FLAIR/post-contrast"
                if what == "image" else "(X, Y, Z) labels")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 3 and what == "image")):
        raise DataError(f"{path}: expected a {expected} volume, got shape {shape}")
    if min(shape[:3]) < 1 or math.prod(shape[:3]) > MAX_VOXELS or max(shape[:3]) > MAX_SIDE:
        raise DataError(f"{path}: volume shape {shape} is empty or too large "
                        f"(at most {MAX_SIDE} voxels a side, {MAX_VOXELS} in all)")
    return shape


def _read_data(img: nib.Nifti1Image, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:  # the voxel data is read only now: truncated or corrupt gzip streams fail here
        return np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise DataError(_reason(path, "cannot read the voxel data", exc)) from None


def read_nifti(path: Path | str, labels: Path | str | None = None) -> NiftiVolume:
    """Read a NIfTI image (and optionally its labels) into a NiftiVolume; DataError if unusable."""
    path = Path(path)
    img = _load(path)
    shape = _spatial_shape(img, path)
    ornt = _display_ornt(img.affine, path)
    data = _read_data(img, path, shape)
    channels = data[..., None] if data.ndim == 3 else data
    flair_index = 0 if channels.shape[-1] == 1 else 1
    flair = np.nan_to_num(channels[..., flair_index], nan=0.0, posinf=0.0, neginf=0.0)
    if flair.min() == flair.max():
        raise DataError(f"{path}: the FLAIR volume is empty (every voxel is {float(flair.min()):g})")
    scaled, scale = zip(*(scale_to_uint8(channels[..., c]) for c in range(channels.shape[-1])),
                        strict=True)
    stack = np.stack(scaled if len(scaled) == 3 else scaled * 3, axis=-1)
    image = to_display(stack, ornt)
    if min(image.shape[1:3]) < MIN_SIDE:
        raise DataError(f"{path}: slices of {image.shape[1]}x{image.shape[2]} voxels are too "
                        f"small (at least {MIN_SIDE}x{MIN_SIDE})")
    volume = NiftiVolume(path=path, patient=Patient(case=nifti_stem(path), image=image, mask=None,
                                                    slice_numbers=[], image_paths=[path]),
                         header=img.header, affine=img.affine, ornt=ornt, shape=shape[:3],
                         channels="flair" if len(scaled) == 1 else "rgb", scale=list(scale))
    index = np.arange(shape[volume.slice_axis])
    volume.patient.slice_numbers = (index[::-1] if ornt[volume.slice_axis, 1] < 0 else index).tolist()
    if labels is not None:
        volume.patient.mask = read_labels(Path(labels), volume)
        volume.labels = Path(labels)
    return volume


def read_labels(path: Path, volume: NiftiVolume) -> np.ndarray:
    """A label NIfTI on the image's grid -> (S, H, W) uint8 {0, 1}: any label > 0 is tumour.

    BraTS labels (1 necrosis, 2 oedema, 4 or 3 enhancing) thus become the whole tumour,
    which is the FLAIR abnormality this model segments.
    """
    img = _load(path)
    shape = _spatial_shape(img, path, what="labels")
    if shape != volume.shape:
        raise DataError(f"{path}: labels shape {shape} differs from the image's {volume.shape}")
    if not np.allclose(img.affine, volume.affine, atol=AFFINE_TOLERANCE):
        raise DataError(f"{path}: labels affine differs from the image's (orientation or voxel "
                        "size); resample the labels onto the image grid first")
    data = np.nan_to_num(_read_data(img, path, shape), nan=0.0)
    return to_display((data > 0).astype(np.uint8), volume.ornt)


def find_labels(image: Path) -> Path:
    """The label file of a NIfTI image: <stem>_mask or <stem>_seg (.nii.gz or .nii) beside it.

    For BraTS names the modality is dropped first: BraTS2021_00000_flair.nii.gz ->
    BraTS2021_00000_seg.nii.gz; BraTS-GLI-00000-000-t2f.nii.gz -> BraTS-GLI-00000-000-seg.nii.gz.
    DataError when there is none, or more than one.
    """
    image = Path(image)
    stem = nifti_stem(image)
    bases = [stem]
    base = MODALITY_RE.sub("", stem)
    if base != stem:
        bases.append(base)
    names = [f.format(stem=b) for b in bases for f in LABEL_NAMES]
    names += [f"{base}-seg"] if base != stem else []
    found = [image.with_name(n + s) for n in dict.fromkeys(names) for s in SUFFIXES
             if image.with_name(n + s).is_file()]
    if not found:
        raise DataError(f"{image}: no labels found beside it (looked for "
                        f"{', '.join(n + '.nii.gz' for n in dict.fromkeys(names))}); "
                        "pass --labels PATH")
    if len(found) > 1:
        raise DataError(f"{image}: several label files beside it ({', '.join(f.name for f in found)});"
                        " choose one with --labels PATH")
    return found[0]


def mask_image(mask: np.ndarray, volume: NiftiVolume) -> nib.Nifti1Image:
    """(S, H, W) {0, 1} -> a uint8 NIfTI on the input's grid, with the input's header.

    Copying the header keeps the affine, both qform and sform with their codes, and the
    voxel size, so every viewer puts the mask exactly on the input.
    """
    data = volume.to_input(np.asarray(mask, dtype=np.uint8))
    cls = nib.Nifti2Image if isinstance(volume.header, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(data, None, header=volume.header.copy())  # affine None: keep the header's as is
    img.header.set_data_dtype(np.uint8)
    img.header.set_intent("none")
    img.header["cal_min"], img.header["cal_max"] = 0, 1
    img.header["descrip"] = b"gliomaseg tumour mask (1 = FLAIR abnormality)"
    return img


def write_mask(path: Path, mask: np.ndarray, volume: NiftiVolume) -> np.ndarray:
    """Write `mask_image` to path; returns the affine written (the input's)."""
    img = mask_image(mask, volume)
    nib.save(img, str(path))
    return img.header.get_best_affine()  # img.affine is None: the header alone defines it


def describe(volume: NiftiVolume) -> dict:
    """How the input was read: for the sidecar beside a prediction."""
    unit = volume.header.get_xyzt_units()[0]
    names = ["FLAIR (copied to all three model channels)"] if volume.channels == "flair" \
        else list(CHANNEL_NAMES)
    return {
        "source": str(volume.path.resolve()),
        "shape": list(volume.shape),
        "axis_order": "the input's voxel axes: data[i, j, k] is voxel (i, j, k) of the source",
        "orientation": "".join(aff2axcodes(volume.affine)),
        "affine": volume.affine.tolist(),
        "spacing_mm": list(volume.zooms_mm),
        "spacing_note": "from the input header" + (" (units unknown, taken as mm)"
                                                   if unit == "unknown" else ""),
        "slice_axis": volume.slice_axis,
        "slice_note": "slices cut across this input axis, fed to the model inferior to "
                      "superior, anterior at the top, patient's right on the left",
        "channels": names,
        "intensity_scale": {"percentile": SCALE_PERCENTILE, "value_at_255": volume.scale},
    }


def channel_note(volume: NiftiVolume, cfg: DataConfig) -> str | None:
    """A one-line hint when a FLAIR-only volume meets a model trained on three channels."""
    if volume.channels == "flair" and cfg.channels == "rgb":
        return (f"{volume.path.name}: FLAIR only; this model was trained on pre-contrast, FLAIR "
                "and post-contrast, so it sees FLAIR in all three channels. A FLAIR-only model "
                "(train with --set data.channels=flair) fits this input better")
    return None
