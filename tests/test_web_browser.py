"""The page in a real browser: Playwright driving Debian's chromium against uvicorn on loopback.

Uploads a synthetic patient zip, waits for the result while checking the progress
state, moves through slices with the slider and the keyboard, checks the overlay
pixels and the numbers against the API, downloads the masks and saves a
screenshot to test-artifacts/web.png (and to docs/images/web.png when
GLIOMASEG_DOCS_SCREENSHOT=1; synthetic data only).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
import zipfile
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx2 as httpx
import pytest

from gliomaseg.inference import load_model
from gliomaseg.web import WebSettings, create_app

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(),
                       reason="Debian's /usr/bin/chromium is not installed (apt install chromium)"),
]


class Gated:
    """The real segmenter, held until the test has seen the progress state."""

    def __init__(self, segmenter):
        self.inner, self.cfg, self.backend = segmenter, segmenter.cfg, segmenter.backend
        self.release = threading.Event()

    def predict(self, volume, post=None):
        assert self.release.wait(60)
        return self.inner.predict(volume, post)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, tiny_checkpoint):
    import uvicorn

    gated = Gated(load_model(tiny_checkpoint))
    app = create_app(gated, WebSettings(temp_root=tmp_path))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", gated
    srv.should_exit = True
    thread.join(15)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900},
                                      accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def write_zip(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{folder.name}/{p.name}")
    return dest


OVERLAY_PIXELS = """() => {
  const img = document.getElementById('img-pred');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return [c.width, c.height, n];
}"""


def wait_loaded(page, selector: str) -> None:
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=10_000)


def current_index(page) -> int:
    return int(page.locator("#slider").input_value())


def shown(value: float, places: int) -> str:
    """`value` as the page shows it: Intl rounds the JSON's decimal half up, where Python's
    format rounds the binary value (0.9185 shows as 0.919 on the page, 0.918 in Python)."""
    return str(Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def test_upload_view_and_download(server, page, synth_root, tmp_path):
    url, gated = server
    folder = sorted(p for p in synth_root.iterdir() if p.is_dir())[1]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    assert "Research use only" in page.locator("#ruo").inner_text()
    page.wait_for_function("() => document.getElementById('limits').textContent.length > 0")

    # CSP: the tests evaluate only functions (Playwright's string expressions need eval).
    # A wrong file type is refused in the page, with a human message.
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    page.set_input_files("#file", str(bad))
    assert "Wrong file type" in page.locator("#error").inner_text()
    # A broken image is refused by the server; its message is shown as is.
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"this is not a tiff at all")
    page.set_input_files("#file", str(broken))
    page.wait_for_function(
        "() => document.getElementById('error').textContent.includes('not a TIFF')")

    # Upload the patient; the progress state stays visible while the model is held.
    page.set_input_files("#file", str(write_zip(folder, tmp_path / "patient.zip")))
    page.wait_for_function(
        "() => document.getElementById('status-text').textContent.startsWith('Segmenting')")
    assert page.locator("#status").is_visible()
    gated.release.set()
    page.locator("#numbers-card").wait_for(state="visible", timeout=60_000)
    assert page.locator("#status").is_hidden() and page.locator("#error").is_hidden()

    rid = page.evaluate("() => state.result.id")
    api = httpx.get(f"{url}/api/results/{rid}").json()
    s = api["slices"]
    assert page.locator("#case").inner_text() == folder.name
    assert page.locator("#volume").inner_text().startswith(f"{api['volume_voxels']:,} voxels")
    assert page.locator("#dice").inner_text() == (
        shown(api["dice"], 3) if api["dice"] is not None else "undefined (no tumour in either)")
    assert page.locator("#seconds").inner_text() == f"{shown(api['seconds'], 2)} s"
    assert page.locator("#tumour-count").inner_text() == f"{len(api['tumour_slices'])} of {s}"
    assert page.locator("#strip .cell").count() == s
    assert page.locator("#strip .cell.t").count() == len(api["tumour_slices"])
    assert page.locator("#strip .cell.g").count() == len(api["truth_slices"])
    assert page.locator("#truth-toggle").is_visible()

    # Slider and keyboard move through the slices; pictures and numbers follow.
    slider = page.locator("#slider")
    slider.fill("0")
    assert current_index(page) == 0
    slider.focus()
    page.keyboard.press("ArrowRight")
    assert current_index(page) == 1
    page.locator("body").click(position={"x": 5, "y": 895})  # away from any control
    page.keyboard.press("ArrowRight")
    assert current_index(page) == 2
    assert page.locator("#slice-label").inner_text() == \
        f"Slice 3 / {s} (file #{api['slice_numbers'][2]})"

    # The overlay on a slice with predicted (else true) tumour has exactly the predicted pixels.
    i = (api["tumour_slices"] or api["truth_slices"])[0]
    page.locator(f"#strip .cell[data-index='{i}']").click()
    assert current_index(page) == i
    assert page.locator("#img-pred").get_attribute("src").endswith(f"/prediction/{i}.png")
    wait_loaded(page, "#img-pred")
    wait_loaded(page, "#img-truth")
    width, height, lit = page.evaluate(OVERLAY_PIXELS)
    assert [height, width] == api["shape"] and lit == api["area_px"][i]
    assert page.locator("#slice-area").inner_text() == f"{api['area_px'][i]:,} px"
    page.locator("#opacity").fill("80")
    assert page.locator("#img-pred").evaluate("e => e.style.opacity") == "0.8"
    page.locator("#show-pred").uncheck()
    assert page.locator("#img-pred").is_hidden()
    page.locator("#show-pred").check()
    assert page.locator("#img-pred").is_visible() and page.locator("#img-truth").is_visible()

    # Download the masks: one Kaggle-named mask per slice.
    with page.expect_download() as info:
        page.locator("#dl-masks").click()
    saved = tmp_path / "masks.zip"
    info.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        names = zf.namelist()
    assert len(names) == s and all(n.endswith("_mask.tif") for n in names)
    assert names[0] == f"{folder.name}/{folder.name}_{api['slice_numbers'][0]}_mask.tif"
    with page.expect_download() as info:
        page.locator("#dl-nifti").click()
    assert info.value.suggested_filename == f"{folder.name}_mask.nii.gz"

    page.locator("#opacity").fill("45")
    page.mouse.move(700, 400)  # no hover highlight on the download buttons in the picture
    shot = ROOT / "test-artifacts" / "web.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("GLIOMASEG_DOCS_SCREENSHOT") == "1":  # synthetic data only
        (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "images" / "web.png")
    # The only console error is the 422 of the broken upload above (Chromium logs every 4xx).
    assert [e for e in errors if "status of 422" not in e] == [], errors


def test_page_shows_server_limits_as_messages(server, page, tmp_path):
    url, gated = server
    gated.release.set()
    page.goto(url)
    page.wait_for_function("() => document.getElementById('limits').textContent.length > 0")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(io.BytesIO(b"PK\x05\x06" + b"\0" * 18).getvalue())
    page.set_input_files("#file", str(empty))
    page.wait_for_function(
        "() => document.getElementById('error').textContent.includes('no slice images')")
    assert page.locator("#numbers-card").is_hidden()


def test_nifti_upload_uses_the_header_spacing(server, page, synth_root, tmp_path):
    import nibabel as nib
    import numpy as np

    from gliomaseg.data import read_patient

    url, gated = server
    gated.release.set()
    folder = sorted(p for p in synth_root.iterdir() if p.is_dir())[1]
    data = read_patient(folder).image.transpose(1, 2, 0, 3).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.5, 1.0]))
    img.header.set_xyzt_units("mm")
    path = tmp_path / "scan_flair.nii.gz"
    nib.save(img, str(path))
    page.goto(url)
    page.wait_for_function("() => document.getElementById('limits').textContent.length > 0")
    page.set_input_files("#file", str(path))  # the page accepts the double suffix
    page.locator("#numbers-card").wait_for(state="visible", timeout=60_000)
    api = httpx.get(f"{url}/api/results/{page.evaluate('() => state.result.id')}").json()
    assert page.locator("#case").inner_text() == "scan_flair"
    assert api["volume_mm3"] == api["volume_voxels"] * 2.5
    assert "cm³" in page.locator("#volume").inner_text()
    assert page.locator("#error").is_hidden()
