"""Validate an uploaded slice, zipped patient folder or NIfTI volume and read it.

Hostile uploads are expected: every limit is checked before the expensive step it
protects (declared zip sizes before extracting, actual bytes while extracting or
un-gzipping, image and NIfTI headers before decoding). Only slice images are extracted, each under a
name generated here (`slice_<n>.tif`, `slice_<n>_mask.tif`) inside a private
folder, so no name from the upload ever reaches the file system; the original
names appear only in messages. Reading then reuses `gliomaseg.data`.

Status codes: 413 when a limit is exceeded (bytes, files, uncompressed size,
slices, image dimensions), 422 when the content is unusable (wrong type, unsafe
or corrupt zip, unreadable image, no slices).
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..data import IMAGE_SUFFIXES, SLICE_RE, DataError, read_image, read_patient
from ..nifti import NiftiVolume, header_shape, is_nifti, nifti_stem, read_nifti

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # first local file header; an empty archive
IMAGE_MAGIC = (b"II*\x00", b"MM\x00*", b"\x89PNG\r\n\x1a\n")  # TIFF (both byte orders), PNG
GZIP_MAGIC = b"\x1f\x8b"  # a gzip upload can only be a .nii.gz
# sizeof_hdr, the first field of a NIfTI-1 (348) or NIfTI-2 (540) header, in either byte order
NIFTI_MAGIC = (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
ALLOWED_SUFFIXES = (".zip", *IMAGE_SUFFIXES, ".nii", ".gz")  # .gz: only as .nii.gz
KINDS = "one slice (.tif or .png), a .zip of one patient folder, or a NIfTI volume (.nii.gz)"
CHUNK = 1 << 16
MiB = 1 << 20


@dataclass(frozen=True)
class UploadLimits:
    """Upload limits. A Kaggle patient (<= 88 slices + masks, 256x256) is about 35 MB unpacked."""

    max_bytes: int = 100 * MiB  # the request body (the file as sent)
    max_files: int = 500  # entries in a zip
    max_uncompressed: int = 400 * MiB  # sum of unpacked zip entries (zip bombs)
    max_side: int = 1024  # pixels, width or height of one slice
    max_slices: int = 240
    max_voxels: int = 16 * MiB  # slices x height x width: bounds the memory one upload takes


class UploadError(ValueError):
    """An upload the server refuses; `status` is the HTTP code (413 or 422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A validated upload. image (S, H, W, 3) uint8; truth (S, H, W) {0,1} or None.

    volume: for a NIfTI upload, how it was read (header, orientation), so the mask can be
    written back on its grid.
    """

    case: str
    image: np.ndarray
    truth: np.ndarray | None
    slice_numbers: list[int]
    notes: list[str] = field(default_factory=list)
    volume: NiftiVolume | None = None


@dataclass(frozen=True)
class Entry:
    """One slice image or mask inside a zip: the original member and the slice it holds."""

    info: zipfile.ZipInfo
    n: int
    is_mask: bool
    case: str

    @property
    def local_name(self) -> str:
        return f"slice_{self.n}{'_mask' if self.is_mask else ''}.tif"


def check_suffix(filename: str | None) -> None:
    """The name the client sent is only used for this check and for display."""
    if not filename:
        return
    name = PurePosixPath(filename.replace("\\", "/")).name.lower()
    suffix = PurePosixPath(name).suffix
    if suffix not in ALLOWED_SUFFIXES or (suffix == ".gz" and not is_nifti(name)):
        shown = suffix or "a file without an extension"
        raise UploadError(f"Wrong file type ({shown}). Upload {KINDS}.")


def sniff(head: bytes) -> str:
    """'zip', 'image', 'nifti' or 'nifti-gz' from the first bytes of the body.

    The content decides, not the name.
    """
    if not head:
        raise UploadError("The upload is empty.")
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(IMAGE_MAGIC):
        return "image"
    if head.startswith(GZIP_MAGIC):
        return "nifti-gz"
    if head.startswith(NIFTI_MAGIC):
        return "nifti"
    raise UploadError(f"This is not a TIFF or PNG image, a zip file or a NIfTI volume. "
                      f"Upload {KINDS}.")


async def receive(chunks: AsyncIterator[bytes], dest: Path, max_bytes: int) -> int:
    """Stream a request body to `dest`, stopping as soon as it exceeds `max_bytes`."""
    total = 0
    with dest.open("wb") as fh:
        async for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise too_large(max_bytes)
            fh.write(chunk)
    return total


def too_large(max_bytes: int) -> UploadError:
    return UploadError(f"The file is too large: the limit is {max_bytes / MiB:.0f} MB.", 413)


def unsafe_reason(name: str) -> str | None:
    """Why a zip member name is unsafe to honour (absolute, drive letter, '..'), else None."""
    path = name.replace("\\", "/")
    if "\x00" in path:
        return "contains a NUL byte"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "is an absolute path"
    if ".." in path.split("/"):
        return "contains '..'"
    return None


def _skipped(base: str, parts: list[str]) -> bool:
    # macOS resource forks and hidden files are noise, not slices.
    return base.startswith(".") or "__MACOSX" in parts


def plan_zip(zf: zipfile.ZipFile, limits: UploadLimits) -> list[Entry]:
    """Check every member of a zip without extracting anything; return its slice entries.

    Files that are not images (data.csv, README) are ignored. Images must follow
    the Kaggle naming <case>_<n>.tif / <case>_<n>_mask.tif (.png accepted), since
    the number is the slice position. All slices must belong to one patient.
    """
    infos = zf.infolist()
    for info in infos:
        reason = unsafe_reason(info.filename)
        if reason:
            raise UploadError(f"Refused: the zip entry '{info.filename}' {reason}.")
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_files:
        raise UploadError(f"The zip holds {len(files)} files; the limit is {limits.max_files}.",
                          413)
    declared = sum(i.file_size for i in files)
    if declared > limits.max_uncompressed:
        raise UploadError(f"The zip unpacks to {declared / MiB:.0f} MB; the limit is "
                          f"{limits.max_uncompressed / MiB:.0f} MB.", 413)
    entries = []
    for info in files:
        parts = info.filename.replace("\\", "/").split("/")
        base = parts[-1]
        suffix = PurePosixPath(base).suffix.lower()
        if _skipped(base, parts) or suffix not in IMAGE_SUFFIXES:
            continue
        if info.flag_bits & 0x1:
            raise UploadError(f"'{info.filename}' is encrypted; upload an unencrypted zip.")
        m = SLICE_RE.match(base[: -len(suffix)] + ".tif")  # reuse the Kaggle pattern for .png
        if m is None:
            raise UploadError(f"'{info.filename}' is not named <case>_<n>.tif (Kaggle layout), "
                              "so its slice position is unknown.")
        entries.append(Entry(info=info, n=int(m["n"]), is_mask=bool(m["mask"]), case=m["case"]))
    return _check_entries(entries, limits)


def _check_entries(entries: list[Entry], limits: UploadLimits) -> list[Entry]:
    images = [e for e in entries if not e.is_mask]
    if not images:
        raise UploadError("The zip contains no slice images (<case>_<n>.tif, as in the Kaggle "
                          "dataset).")
    cases = sorted({e.case for e in entries})
    if len(cases) > 1:
        shown = ", ".join(cases[:3]) + (", ..." if len(cases) > 3 else "")
        raise UploadError(f"The zip holds slices of {len(cases)} patients ({shown}); "
                          "upload one patient folder at a time.")
    seen: dict[str, str] = {}
    for e in entries:  # two entries must never map to one generated file name
        if e.local_name in seen:
            raise UploadError(f"Slice {e.n} appears twice in the zip "
                              f"('{seen[e.local_name]}' and '{e.info.filename}').")
        seen[e.local_name] = e.info.filename
    if len(images) > limits.max_slices:
        raise UploadError(f"The zip holds {len(images)} slices; the limit is "
                          f"{limits.max_slices}.", 413)
    return entries


def extract(zf: zipfile.ZipFile, entries: list[Entry], folder: Path,
            limits: UploadLimits) -> dict[Path, str]:
    """Write the planned entries under generated names; returns local path -> original name.

    Counts the bytes actually inflated, so a zip that lies about its sizes still
    stops at the limit.
    """
    folder.mkdir()
    names, total = {}, 0
    for entry in entries:
        dest = folder / entry.local_name
        names[dest] = entry.info.filename
        try:
            with zf.open(entry.info) as src, dest.open("wb") as out:
                while chunk := src.read(CHUNK):
                    total += len(chunk)
                    if total > limits.max_uncompressed:
                        raise UploadError(f"The zip unpacks to more than "
                                          f"{limits.max_uncompressed / MiB:.0f} MB.", 413)
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise UploadError(f"'{entry.info.filename}' in the zip is corrupt ({exc}).") from None
    return names


def check_dimensions(path: Path, shown: str, max_side: int) -> int:
    """Read only the image header: refuse huge images before decoding any pixels.

    Returns the pixel count (0 when the header is unreadable: read_image reports that).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"'{shown}' is far too large an image.", 413) from None
    except Exception:  # unreadable: read_image reports it with a proper message
        return 0
    if max(width, height) > max_side:
        raise UploadError(f"'{shown}' is {width}x{height} pixels; the limit is {max_side} "
                          "pixels per side.", 413)
    return width * height


def _humanize(exc: DataError, names: dict[Path, str], workdir: Path) -> UploadError:
    """A DataError names our private files; show the user's names instead."""
    message = str(exc)
    for local, original in names.items():
        message = message.replace(str(local), original)
    message = message.replace(str(workdir) + "/", "")
    # "cannot read image (UnidentifiedImageError: cannot identify ...)" -> plainer words
    message = re.sub(r"cannot read image \((\w+): .*\)$",
                     r"cannot read this image: the file is damaged or not a real TIFF/PNG (\1)",
                     message)
    return UploadError(message)


def safe_case(name: str) -> str:
    """A case name for display and download names (never for the file system)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80].lstrip(".")
    return cleaned or "upload"


def read_single(path: Path, filename: str | None, limits: UploadLimits) -> Upload:
    """One slice image at our own `path`; case and slice number from a Kaggle-style name."""
    shown = PurePosixPath((filename or "upload").replace("\\", "/")).name
    check_dimensions(path, shown, limits.max_side)
    try:
        image = read_image(path)
    except DataError as exc:
        raise _humanize(exc, {path: shown}, path.parent) from None
    stem = PurePosixPath(shown).stem
    m = SLICE_RE.match(stem + ".tif")
    case, n = (m["case"], int(m["n"])) if m and not m["mask"] else (stem, 1)
    notes = ["This is a mask file, not an image."] if m and m["mask"] else []
    return Upload(case=safe_case(case), image=image[None], truth=None, slice_numbers=[n],
                  notes=notes)


def read_zip(path: Path, workdir: Path, limits: UploadLimits) -> Upload:
    """A zipped patient folder (Kaggle layout, or just its images) at our own `path`."""
    try:
        with zipfile.ZipFile(path) as zf:
            entries = plan_zip(zf, limits)
            folder = workdir / "patient"
            names = extract(zf, entries, folder, limits)
    except zipfile.BadZipFile:
        raise UploadError("The zip file is damaged or incomplete.") from None
    voxels = 0
    for local, original in names.items():  # masks too: a mask can be a bomb as well
        pixels = check_dimensions(local, original, limits.max_side)
        voxels += 0 if local.stem.endswith("_mask") else pixels
    if voxels > limits.max_voxels:
        raise UploadError(f"The scan has {voxels / 1e6:.0f} million voxels; the limit is "
                          f"{limits.max_voxels / 1e6:.0f} million.", 413)
    try:
        patient = read_patient(folder, clinical={})
    except DataError as exc:
        raise _humanize(exc, names, workdir) from None
    masks = sum(e.is_mask for e in entries)
    notes = []
    if patient.mask is None and masks:
        notes.append(f"Ground truth ignored: only {masks} of {patient.num_slices} slices "
                     "have a mask.")
    return Upload(case=safe_case(entries[0].case), image=patient.image, truth=patient.mask,
                  slice_numbers=patient.slice_numbers, notes=notes)


def gunzip(path: Path, dest: Path, limit: int) -> None:
    """Inflate `path` to `dest`, stopping at `limit` bytes (a gzip bomb inflates far more)."""
    total = 0
    try:
        with gzip.open(path, "rb") as src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise UploadError(f"The volume unpacks to more than {limit / MiB:.0f} MB.",
                                      413)
                out.write(chunk)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise UploadError(f"The .nii.gz file is damaged or incomplete ({exc}).") from None


def read_volume(path: Path, workdir: Path, filename: str | None, limits: UploadLimits,
                gzipped: bool) -> Upload:
    """A NIfTI volume at our own `path`: un-gzipped under a cap, its header checked against
    the limits, then read by `nifti.read_nifti` (orientation, intensities, FLAIR or 3 channels).
    """
    shown = PurePosixPath((filename or "upload.nii.gz").replace("\\", "/")).name
    local = workdir / "volume.nii"
    if gzipped:
        gunzip(path, local, limits.max_uncompressed)
    else:
        path.rename(local)
    try:
        shape = header_shape(local)
        side, voxels = max(shape[:3]), math.prod(shape[:3])
        if side > limits.max_side or voxels > limits.max_voxels:
            raise UploadError(f"The volume is {'x'.join(map(str, shape[:3]))} voxels; the limits "
                              f"are {limits.max_side} per side and {limits.max_voxels / 1e6:.0f} "
                              "million in all.", 413)
        volume = read_nifti(local)
    except DataError as exc:
        raise _humanize(exc, {local: shown}, workdir) from None
    if len(volume.patient.slice_numbers) > limits.max_slices:
        raise UploadError(f"The volume has {len(volume.patient.slice_numbers)} slices; the "
                          f"limit is {limits.max_slices}.", 413)
    case = nifti_stem(shown) if is_nifti(shown) else PurePosixPath(shown).stem
    return Upload(case=safe_case(case), image=volume.patient.image, truth=None,
                  slice_numbers=volume.patient.slice_numbers, volume=volume)


def read_upload(path: Path, workdir: Path, filename: str | None,
                limits: UploadLimits) -> Upload:
    """The received body at `path` (inside the private `workdir`) -> Upload, or UploadError."""
    check_suffix(filename)
    with path.open("rb") as fh:
        kind = sniff(fh.read(8))
    if kind == "zip":
        return read_zip(path, workdir, limits)
    if kind.startswith("nifti"):
        return read_volume(path, workdir, filename, limits, gzipped=kind == "nifti-gz")
    return read_single(path, filename, limits)
