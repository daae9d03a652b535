"""Web app API (FastAPI TestClient): uploads, results, downloads, limits and hostile uploads."""

from __future__ import annotations

import gzip
import io
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import httpx2 as httpx
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gliomaseg.data import read_image, read_patient
from gliomaseg.inference import load_model
from gliomaseg.metrics import confusion, dice
from gliomaseg.nifti import read_nifti
from gliomaseg.web import UploadLimits, WebSettings, create_app
from gliomaseg.web.app import _sweep_dirs
from gliomaseg.web.uploads import UploadError, extract, plan_zip, unsafe_reason

STATIC = Path(__file__).resolve().parents[1] / "src" / "gliomaseg" / "web" / "static"


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def patient_dir(synth_root) -> Path:
    return sorted(p for p in synth_root.iterdir() if p.is_dir())[0]


@pytest.fixture
def make_client(segmenter, tmp_path):
    """Open clients (lifespan running) on a private temp root under tmp_path."""
    opened = []

    def make(clock=time.monotonic, seg=None, **overrides) -> TestClient:
        limits = overrides.pop("limits", UploadLimits())
        settings = WebSettings(limits=limits, temp_root=tmp_path, **overrides)
        client = TestClient(create_app(seg or segmenter, settings, clock=clock))
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def patient_zip(folder: Path, prefix: str = "", masks: bool = True, extra=None) -> bytes:
    files = {f"{prefix}{p.name}": p.read_bytes() for p in sorted(folder.iterdir())
             if masks or not p.name.endswith("_mask.tif")}
    return zip_bytes({**files, **(extra or {})})


def tif(array: np.ndarray, fmt: str = "TIFF") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def post(client: TestClient, body: bytes, filename: str | None = "patient.zip", **params):
    if filename is not None:
        params["filename"] = filename
    return client.post("/api/uploads", content=body, params=params)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (pixels never follow): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def assert_refused(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for word in words:
        assert word.lower() in detail.lower(), detail
    return detail


def leftovers(root: Path) -> list[Path]:
    """Files under the temp root other than the (empty) private folder itself."""
    return [p for p in root.rglob("*") if p.is_file()]


# --- page, health, docs ----------------------------------------------------------------------

def test_health_and_limits(client, segmenter):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["pending"] == 0
    assert health["model"]["size"] == segmenter.cfg.data.size
    assert health["model"]["networks"] == segmenter.cfg.model.members
    limits = client.get("/api/limits").json()
    assert limits["max_bytes"] == UploadLimits().max_bytes
    assert "research use only" in limits["notice"].lower()


def test_two_apps_keep_their_own_settings(make_client):
    # Settings live on each app's state, not in module globals: apps side by side (tests,
    # or a server with two models) must not see each other's limits.
    small = make_client(limits=UploadLimits(max_bytes=1000), result_ttl=60.0)
    default = make_client()
    assert small.get("/api/limits").json()["max_bytes"] == 1000
    assert small.get("/api/limits").json()["result_ttl"] == 60.0
    assert default.get("/api/limits").json()["max_bytes"] == UploadLimits().max_bytes
    body = b"PK\x03\x04" + b"\0" * 2000
    assert post(small, body).status_code == 413
    assert post(default, body).status_code == 422  # refused as a corrupt zip, not for its size


def test_page_is_served_offline_with_research_banner(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Research use only" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|url\(\s*['\"]?//", text), f"{name} refers to a remote file"
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/health", "/api/uploads", "/api/results/{rid}", "/api/results/{rid}/masks.zip",
                 "/api/results/{rid}/mask.nii.gz", "/api/results/{rid}/slices/{index}.png"):
        assert path in paths
    body = paths["/api/uploads"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in body


# --- a whole patient -------------------------------------------------------------------------

def test_patient_zip_end_to_end(client, segmenter, patient_dir):
    response = post(client, patient_zip(patient_dir), pixel_mm=0.5, slice_mm=2.0)
    assert response.status_code == 201, response.text
    r = response.json()
    patient = read_patient(patient_dir)
    expected = segmenter.predict(patient.image).mask
    s = patient.num_slices
    assert r["case"] == patient_dir.name and r["slices"] == s and r["has_truth"]
    assert r["slice_numbers"] == patient.slice_numbers and r["seconds"] > 0
    assert r["area_px"] == expected.reshape(s, -1).sum(1).tolist()
    assert r["volume_voxels"] == int(expected.sum())
    assert r["tumour_slices"] == [i for i in range(s) if expected[i].any()]
    assert r["volume_mm3"] == pytest.approx(expected.sum() * 0.5 * 0.5 * 2.0, abs=0.1)
    assert r["area_mm2"][0] == pytest.approx(r["area_px"][0] * 0.25)
    assert r["dice"] == pytest.approx(dice(confusion(expected, patient.mask)), abs=1e-4)
    assert r["truth_volume_voxels"] == int(patient.mask.sum())

    # The masks download holds exactly the prediction, in Kaggle naming.
    masks = client.get(r["links"]["masks"])
    assert masks.status_code == 200 and "attachment" in masks.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(masks.content)) as zf:
        names = zf.namelist()
        assert names == [f"{patient_dir.name}/{patient_dir.name}_{n}_mask.tif"
                         for n in patient.slice_numbers]
        got = np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in names])
    assert set(np.unique(got).tolist()) <= {0, 255}
    np.testing.assert_array_equal(got // 255, expected)

    # The NIfTI volume, as `gliomaseg predict` writes it: (row, column, slice), with spacing.
    nii = client.get(r["links"]["nifti"])
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nii.content))
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 0, 1), expected)
    assert img.header.get_zooms() == pytest.approx((0.5, 0.5, 2.0))


def test_slice_and_overlay_pictures(client, patient_dir):
    r = post(client, patient_zip(patient_dir)).json()
    patient = read_patient(patient_dir)
    i = r["tumour_slices"][0] if r["tumour_slices"] else r["truth_slices"][0]
    base = f"/api/results/{r['id']}"
    flair = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/slices/{i}.png").content)))
    np.testing.assert_array_equal(flair, patient.image[i, ..., 1])
    rgb = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/slices/{i}.png?channel=rgb")
                                           .content)))
    np.testing.assert_array_equal(rgb, patient.image[i])
    pred = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/prediction/{i}.png").content)))
    assert pred.shape == (*patient.image.shape[1:3], 4)
    assert int((pred[..., 3] > 0).sum()) == r["area_px"][i]
    j = r["truth_slices"][0]
    truth = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/truth/{j}.png").content)))
    outline = truth[..., 3] > 0
    assert outline.any() and not (outline & (patient.mask[j] == 0)).any()  # on the mask only
    assert outline.sum() < patient.mask[j].sum()  # an outline, not the fill
    assert client.get(f"{base}/slices/{r['slices']}.png").status_code == 404
    assert client.get(f"{base}/slices/0.png?channel=bogus").status_code == 422


def test_kaggle_root_layout_with_csv_and_folders(client, patient_dir):
    body = patient_zip(patient_dir, prefix=f"kaggle_3m/{patient_dir.name}/",
                       extra={"kaggle_3m/data.csv": b"Patient\nx\n", "kaggle_3m/": b"",
                              "__MACOSX/._x_1.tif": b"junk", "README.md": b"hello"})
    r = post(client, body)
    assert r.status_code == 201, r.text
    assert r.json()["case"] == patient_dir.name and r.json()["has_truth"]


def test_images_only_zip_has_no_truth(client, patient_dir):
    r = post(client, patient_zip(patient_dir, masks=False)).json()
    assert r["has_truth"] is False and "dice" not in r
    assert client.get(f"/api/results/{r['id']}/truth/0.png").status_code == 404


def test_partial_masks_are_ignored_with_a_note(client, patient_dir):
    files = sorted(patient_dir.glob("*_mask.tif"))
    body = patient_zip(patient_dir, masks=False, extra={files[0].name: files[0].read_bytes()})
    r = post(client, body).json()
    assert r["has_truth"] is False
    assert any("only 1 of" in note for note in r["notes"])


@pytest.mark.parametrize("fmt,name", [("TIFF", "TCGA_XX_0001_20000101_7.tif"),
                                      ("PNG", "slice.png")])
def test_single_slice(client, segmenter, patient_dir, fmt, name):
    image = read_image(next(patient_dir.glob("*_5.tif")))
    r = post(client, tif(image, fmt), filename=name)
    assert r.status_code == 201, r.text
    r = r.json()
    assert r["slices"] == 1 and r["has_truth"] is False
    assert r["area_px"] == [int(segmenter.predict(image).mask.sum())]
    if fmt == "TIFF":
        assert r["case"] == "TCGA_XX_0001_20000101" and r["slice_numbers"] == [7]


def test_no_filename_needed(client, patient_dir):
    """curl --data-binary without ?filename: the content decides."""
    assert post(client, patient_zip(patient_dir), filename=None).status_code == 201


def nifti_bytes(patient_dir: Path, zooms=(0.9, 0.8, 3.0), gz: bool = True) -> bytes:
    """The patient as an (X, Y, Z, 3) NIfTI (pre-contrast, FLAIR, post-contrast) with a voxel size."""
    data = read_patient(patient_dir).image.transpose(1, 2, 0, 3).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


@pytest.mark.parametrize("gz", [True, False])
def test_nifti_volume_end_to_end(client, segmenter, patient_dir, tmp_path, gz):
    body = nifti_bytes(patient_dir, gz=gz)
    name = "BraTS_00001_flair.nii" + (".gz" if gz else "")
    response = post(client, body, filename=name)
    assert response.status_code == 201, response.text
    r = response.json()
    src = tmp_path / name
    src.write_bytes(body)
    volume = read_nifti(src)
    expected = segmenter.predict(volume.patient.image).mask
    assert r["case"] == "BraTS_00001_flair" and r["has_truth"] is False
    assert r["slices"] == expected.shape[0] and r["slice_numbers"] == volume.patient.slice_numbers
    assert r["volume_voxels"] == int(expected.sum()) > 0
    # spacing from the header: areas exact with the geometric mean of 0.9 and 0.8 mm
    assert r["volume_mm3"] == pytest.approx(expected.sum() * 0.9 * 0.8 * 3.0, rel=1e-3)
    # the mask download lies on the upload's grid, with its affine
    nii = client.get(r["links"]["nifti"])
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nii.content))
    np.testing.assert_array_equal(np.asarray(img.dataobj), volume.to_input(expected))
    np.testing.assert_allclose(img.affine, np.diag([0.9, 0.8, 3.0, 1.0]))


def test_hostile_nifti_uploads(make_client, patient_dir):
    client = make_client(limits=UploadLimits(max_uncompressed=2 << 20, max_voxels=100_000))
    assert_refused(post(client, gzip.compress(b"\0" * (4 << 20)), filename="bomb.nii.gz"), 413,
                   "unpacks to more than 2 MB")
    body = nifti_bytes(patient_dir)  # 12 slices of 128x128 (1.2 MB unpacked): 196k voxels
    assert_refused(post(client, body, filename="big.nii.gz"), 413, "128x128x12", "limits")
    assert_refused(post(client, body[: len(body) // 2], filename="cut.nii.gz"), 422,
                   "damaged or incomplete")
    detail = assert_refused(post(client, gzip.compress(b"not a nifti header " * 40),
                                 filename="junk.nii.gz"), 422, "junk.nii.gz", "not a readable NIfTI")
    assert "volume.nii" not in detail  # our private file name never leaks
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 300))  # a header alone that claims 4.8 G voxels
    assert_refused(post(client, header.binaryblock + b"\0" * 4, filename="huge.nii"), 413,
                   "4000x4000x300")
    assert_refused(post(client, body, filename="scan.tar.gz"), 422, "wrong file type")


def test_results_expire_and_can_be_deleted(make_client, patient_dir):
    now = [1000.0]
    client = make_client(clock=lambda: now[0], result_ttl=60.0)
    body = patient_zip(patient_dir, masks=False)
    first, second = post(client, body).json()["id"], post(client, body).json()["id"]
    assert client.get(f"/api/results/{first}").json()["expires_in"] == 60
    assert client.delete(f"/api/results/{second}").status_code == 204
    assert client.get(f"/api/results/{second}").status_code == 404
    now[0] += 61
    assert_refused(client.get(f"/api/results/{first}"), 404, "expired")
    assert client.get("/api/results/not-an-id").status_code == 422


def test_background_sweeper_expires_results(make_client, patient_dir):
    client = make_client(result_ttl=0.5)  # real clock; the sweeper runs every 0.5 s
    post(client, patient_zip(patient_dir, masks=False))
    assert client.get("/health").json()["results"] == 1
    deadline = time.monotonic() + 10
    while client.get("/health").json()["results"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/health").json()["results"] == 0


def test_stale_work_folders_are_swept(tmp_path):
    old, busy, fresh = (tmp_path / n for n in ("old", "busy", "fresh"))
    for folder in (old, busy, fresh):
        folder.mkdir()
        (folder / "upload.bin").write_bytes(b"x")
    for folder in (old, busy):
        os.utime(folder, (time.time() - 120, time.time() - 120))
    _sweep_dirs(tmp_path, ttl=60, active={busy})
    assert not old.exists() and busy.exists() and fresh.exists()


def test_capacity_drops_oldest(make_client, patient_dir):
    client = make_client(max_results=1)
    body = patient_zip(patient_dir, masks=False)
    first, second = post(client, body).json()["id"], post(client, body).json()["id"]
    assert client.get(f"/api/results/{first}").status_code == 404
    assert client.get(f"/api/results/{second}").status_code == 200


def test_nothing_left_on_disk(make_client, tmp_path, patient_dir):
    client = make_client()
    r = post(client, patient_zip(patient_dir)).json()
    post(client, b"not an image", filename="x.tif")
    assert client.get(r["links"]["nifti"]).status_code == 200
    assert leftovers(tmp_path) == []  # work folders go as soon as the upload or file is done
    roots = list(tmp_path.iterdir())
    assert len(roots) == 1 and roots[0].name.startswith("gliomaseg-web-")
    client.__exit__(None, None, None)
    assert not roots[0].exists()  # the private folder goes with the server


# --- hostile and broken uploads ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../evil_1.tif", "a/../../evil_1.tif", "/tmp/evil_1.tif",
                                  "C:/evil_1.tif", "..\\evil_1.tif"])
def test_zip_slip_and_absolute_paths_refused(make_client, tmp_path, patient_dir, name):
    client = make_client()
    slice_bytes = next(patient_dir.glob("*_1.tif")).read_bytes()
    detail = assert_refused(post(client, zip_bytes({"ok_1.tif": slice_bytes, name: slice_bytes})),
                            422, "refused")
    assert name in detail
    assert not (tmp_path.parent / "evil_1.tif").exists() and not Path("/tmp/evil_1.tif").exists()
    assert leftovers(tmp_path) == []


def test_unsafe_reason():
    assert unsafe_reason("TCGA/TCGA_1.tif") is None and unsafe_reason("a..b_1.tif") is None
    assert unsafe_reason("x/../y") and unsafe_reason("/x") and unsafe_reason("D:\\x")
    assert unsafe_reason("a\x00b")


def test_zip_bomb_refused_before_extracting(make_client, tmp_path):
    client = make_client(limits=UploadLimits(max_uncompressed=2 * 2**20))
    body = zip_bytes({"bomb_1.tif": b"\0" * (8 * 2**20)})
    assert len(body) < 20_000  # small on the wire
    assert_refused(post(client, body), 413, "unpacks to", "limit")
    assert leftovers(tmp_path) == []


def test_inflated_bytes_are_counted_even_if_sizes_lie(tmp_path):
    """extract stops at the limit by counting what it inflates, not what the zip declares."""
    body = zip_bytes({"a_1.tif": b"\0" * 300_000, "a_2.tif": b"\0" * 300_000})
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        entries = plan_zip(zf, UploadLimits())
        with pytest.raises(UploadError) as err:
            extract(zf, entries, tmp_path / "out", UploadLimits(max_uncompressed=400_000))
    assert err.value.status == 413


def test_too_many_files(make_client):
    client = make_client(limits=UploadLimits(max_files=5))
    body = zip_bytes({f"c_{i}.tif": b"x" for i in range(6)})
    assert_refused(post(client, body), 413, "6 files", "limit is 5")


def test_too_many_slices(make_client, patient_dir):
    client = make_client(limits=UploadLimits(max_slices=4))
    assert_refused(post(client, patient_zip(patient_dir)), 413, "slices", "limit is 4")


def test_body_too_large_by_header_and_by_stream(make_client):
    client = make_client(limits=UploadLimits(max_bytes=1000))
    assert_refused(post(client, b"PK\x03\x04" + b"\0" * 2000), 413, "too large")

    def chunks():  # no Content-Length: the server must count while receiving
        for _ in range(10):
            yield b"\0" * 500

    assert_refused(client.post("/api/uploads", content=chunks()), 413, "too large")


@pytest.mark.parametrize("filename", ["scan.jpg", "notes.txt", "noext"])
def test_wrong_file_type(client, filename):
    assert_refused(post(client, b"PK\x03\x04whatever", filename=filename), 422, "wrong file type")


def test_non_image_content(client):
    assert_refused(post(client, b"hello, I am text", filename="slice.tif"), 422,
                   "not a TIFF or PNG image")
    assert_refused(post(client, b"", filename="slice.tif"), 422, "empty")


def test_corrupt_tiff(client, tmp_path):
    body = b"II*\x00" + bytes(range(256)) * 4
    detail = assert_refused(post(client, body, filename="TCGA_A_1.tif"), 422, "TCGA_A_1.tif",
                            "cannot read")
    assert str(tmp_path) not in detail  # our private paths never leak into messages
    detail = assert_refused(post(client, zip_bytes({"p/TCGA_A_1.tif": body})), 422,
                            "p/TCGA_A_1.tif", "cannot read")
    assert str(tmp_path) not in detail


def test_huge_dimensions(make_client):
    client = make_client(limits=UploadLimits(max_side=512))
    wide = tif(np.zeros((16, 600, 3), np.uint8), "PNG")
    assert_refused(post(client, wide, filename="wide.png"), 413, "600x16", "512")
    bomb = png_header_only(60_000, 60_000)
    assert_refused(post(client, bomb, filename="bomb.png"), 413, "too large")
    assert_refused(post(client, zip_bytes({"b_1.png": bomb})), 413, "b_1.png")


def test_too_many_voxels(make_client, patient_dir):
    client = make_client(limits=UploadLimits(max_voxels=100_000))  # 12 slices of 128x128: 196k
    assert_refused(post(client, patient_zip(patient_dir)), 413, "voxels", "limit")


def test_mask_bomb_refused(client, patient_dir):
    name = next(patient_dir.glob("*_1_mask.tif")).name
    body = patient_zip(patient_dir, extra={name: png_header_only(60_000, 60_000)})
    assert_refused(post(client, body), 413, name)


def test_empty_and_imageless_zips(client):
    assert_refused(post(client, zip_bytes({})), 422, "no slice images")
    assert_refused(post(client, zip_bytes({"readme.txt": b"hi", "data.csv": b"a,b"})), 422,
                   "no slice images")
    assert_refused(post(client, zip_bytes({"x_1_mask.tif": tif(np.zeros((8, 8), np.uint8))})),
                   422, "no slice images")


def test_broken_zip_structure(client, patient_dir):
    body = patient_zip(patient_dir)
    assert_refused(post(client, body[: len(body) // 2]), 422, "zip")
    many = zip_bytes({"A_1.tif": b"x", "B_1.tif": b"x"})
    assert_refused(post(client, many), 422, "2 patients")
    assert_refused(post(client, zip_bytes({"scan.tif": b"x"})), 422, "<case>_<n>.tif")
    dup = zip_bytes({"a/P_1.tif": b"x", "b/P_1.tif": b"x"})
    assert_refused(post(client, dup), 422, "appears twice")


def test_encrypted_entry_refused(client):
    body = bytearray(zip_bytes({"P_1.tif": b"x"}))
    central = body.index(b"PK\x01\x02")
    body[6] |= 0x1  # the "encrypted" flag bit, in the local and the central header
    body[central + 8] |= 0x1
    assert_refused(post(client, bytes(body)), 422, "encrypted")


def test_mismatched_slice_shapes(client, patient_dir):
    small = tif(np.zeros((32, 32, 3), np.uint8))
    body = patient_zip(patient_dir, masks=False, extra={f"{patient_dir.name}_99.tif": small})
    assert_refused(post(client, body), 422, "_99.tif", "differs")


def test_bad_spacing(client, patient_dir):
    r = post(client, patient_zip(patient_dir), pixel_mm=-1)
    assert r.status_code == 422


# --- concurrency -----------------------------------------------------------------------------

class Gated:
    """The real segmenter, held at a gate so that a test can look at the server meanwhile."""

    def __init__(self, segmenter):
        self.inner, self.cfg, self.backend = segmenter, segmenter.cfg, "torch"
        self.entered, self.release = threading.Event(), threading.Event()

    def predict(self, volume, post=None):
        self.entered.set()
        assert self.release.wait(30)
        return self.inner.predict(volume, post)


def test_health_answers_while_segmenting_and_queue_is_bounded(make_client, segmenter,
                                                              patient_dir):
    gated = Gated(segmenter)
    client = make_client(seg=gated, max_concurrent=1, max_queue=0)
    body = patient_zip(patient_dir, masks=False)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=post(client, body)))
    worker.start()
    try:
        assert gated.entered.wait(30)
        health = client.get("/health")  # the model is busy in a worker thread
        assert health.status_code == 200 and health.json()["pending"] == 1
        assert_refused(post(client, body), 503, "busy")
    finally:
        gated.release.set()
        worker.join(60)
    assert outcome["r"].status_code == 201
    assert client.get("/health").json()["pending"] == 0


def test_loader_is_called_at_startup(tiny_checkpoint, tmp_path, patient_dir):
    calls = []

    def loader():
        calls.append(1)
        return load_model(tiny_checkpoint)

    app = create_app(loader, WebSettings(temp_root=tmp_path))
    assert calls == []
    with TestClient(app) as client:
        assert calls == [1]
        assert post(client, patient_zip(patient_dir, masks=False)).status_code == 201


# --- the serve verb ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_cli_starts_and_answers(tiny_checkpoint, patient_dir, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gliomaseg.cli", "serve", "--model",
                             str(tiny_checkpoint), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        r = httpx.post(f"{url}/api/uploads", content=patient_zip(patient_dir), timeout=60)
        assert r.status_code == 201 and r.json()["slices"] > 1
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_serve_cli_bad_model_is_one_line(tmp_path):
    from conftest import run_cli

    r = run_cli("serve", "--model", tmp_path / "missing.pt")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "missing.pt" in r.stderr
