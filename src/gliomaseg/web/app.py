"""FastAPI app: one static page and the JSON/PNG endpoints behind it (OpenAPI at /docs).

Thin layer: uploads.py validates and reads uploads, results.py computes numbers
and pictures, the model is a `gliomaseg.inference.Segmenter` passed in (tests
inject a tiny one). Inference runs on dedicated worker threads (bounded concurrency), so
the event loop keeps answering /health while the model works, and a bounded
queue turns overload into a clear 503 instead of unbounded memory.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..data import DataError
from ..nifti import channel_note
from . import results as res
from .uploads import Upload, UploadError, UploadLimits, read_upload, receive, too_large

STATIC = Path(__file__).parent / "static"
RAW_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
SECURITY_HEADERS = {
    # No CDN and no inline code: everything the page needs comes from this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
DOCS = ("/docs", "/redoc")  # FastAPI's API pages load Swagger UI from a CDN: no CSP there
# Module level: FastAPI resolves these string annotations in this module's namespace.
Rid = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{16,64}$", description="result id")]
Index = Annotated[int, PathParam(ge=0, description="0-based slice position")]


@dataclass(frozen=True)
class WebSettings:
    """Server settings (not model settings, which travel with the model in its Config)."""

    limits: UploadLimits = field(default_factory=UploadLimits)
    max_concurrent: int = 1  # models running at once; 1 suits a 2-core CPU
    max_queue: int = 8  # uploads waiting for the model before the server answers 503
    result_ttl: float = 3600.0  # seconds a result (and its temporary files) is kept
    max_results: int = 16  # results held in memory at once (oldest dropped first)
    temp_root: Path | None = None  # parent of the private temporary folder; None: system default


class Busy(Exception):
    """Too many uploads waiting for the model."""


class InferenceGate:
    """At most `limit` model calls run at once, at most `queue` wait; the rest get Busy.

    The model runs on `limit` dedicated threads rather than the shared thread pool:
    PyTorch's OpenMP pool is per calling thread, so calling it from ever-changing
    pool threads would build several spinning thread teams on a 2-core machine.
    """

    def __init__(self, limit: int, queue: int):
        self.limit, self.queue = limit, queue
        self.executor = ThreadPoolExecutor(limit, thread_name_prefix="gliomaseg-model")
        self.pending = 0  # running + waiting; only touched on the event loop

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.pending >= self.limit + self.queue:
            raise Busy
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args))
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _load(segmenter_or_loader: Any) -> Any:
    return segmenter_or_loader if hasattr(segmenter_or_loader, "predict") \
        else segmenter_or_loader()


def _model_info(segmenter: Any) -> dict:
    cfg = segmenter.cfg
    return {"backend": getattr(segmenter, "backend", "torch"), "size": cfg.data.size,
            "channels": cfg.data.channels, "context": cfg.data.context,
            "threshold": cfg.post.threshold, "networks": cfg.model.members}


def _sweep_dirs(root: Path, ttl: float, active: set[Path]) -> None:
    """Remove work folders older than the ttl that no request is using (left by a crash)."""
    now = time.time()
    for child in root.iterdir():
        try:
            if child not in active and now - child.stat().st_mtime > ttl:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            pass


# The routes of one result. Module level: they need only the store on app.state.
result_routes = APIRouter(prefix="/api/results")


def result_or_404(request: Request, rid: str) -> res.Result:
    found = request.app.state.store.get(rid)
    if found is None:
        raise HTTPException(404, "No such result: it has expired or was deleted. "
                                 "Upload the scan again.")
    return found


def summary(request: Request, r: res.Result) -> dict:
    base = f"/api/results/{r.id}"
    return {**res.stats(r), "expires_in": round(request.app.state.store.expires_in(r)),
            "links": {"masks": f"{base}/masks.zip", "nifti": f"{base}/mask.nii.gz",
                      "slice": f"{base}/slices/{{index}}.png",
                      "prediction": f"{base}/prediction/{{index}}.png",
                      "truth": f"{base}/truth/{{index}}.png" if r.truth is not None
                      else None}}


@result_routes.get("/{rid}", summary="statistics of a result")
def get_result(request: Request, rid: Rid) -> dict:
    return summary(request, result_or_404(request, rid))


@result_routes.delete("/{rid}", status_code=204, summary="delete a result now")
def delete_result(request: Request, rid: Rid) -> Response:
    if not request.app.state.store.remove(rid):
        raise HTTPException(404, "No such result.")
    return Response(status_code=204)


def _png(content: bytes) -> Response:
    return Response(content, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=600"})


def _slice(request: Request, rid: str, index: int) -> res.Result:
    r = result_or_404(request, rid)
    if index >= r.num_slices:
        raise HTTPException(404, f"Slice {index} does not exist (0-{r.num_slices - 1}).")
    return r


@result_routes.get("/{rid}/slices/{index}.png", summary="one MRI slice as PNG")
def get_slice(request: Request, rid: Rid, index: Index,
              channel: Literal["flair", "pre", "post", "rgb"] = "flair") -> Response:
    return _png(res.slice_png(_slice(request, rid, index), index, channel))


@result_routes.get("/{rid}/prediction/{index}.png",
                   summary="predicted tumour of one slice (RGBA PNG overlay)")
def get_prediction(request: Request, rid: Rid, index: Index) -> Response:
    return _png(res.prediction_png(_slice(request, rid, index), index))


@result_routes.get("/{rid}/truth/{index}.png",
                   summary="ground-truth outline of one slice (RGBA PNG overlay)")
def get_truth(request: Request, rid: Rid, index: Index) -> Response:
    r = _slice(request, rid, index)
    if r.truth is None:
        raise HTTPException(404, "This upload had no masks, so there is no ground truth.")
    return _png(res.truth_png(r, index))


def _download(content: bytes, media: str, name: str) -> Response:
    return Response(content, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@result_routes.get("/{rid}/masks.zip", summary="predicted masks, Kaggle naming, zipped")
def get_masks(request: Request, rid: Rid) -> Response:
    r = result_or_404(request, rid)
    return _download(res.masks_zip(r), "application/zip", f"{r.case}_masks.zip")


@result_routes.get("/{rid}/mask.nii.gz", summary="predicted mask as a NIfTI volume")
def get_nifti(request: Request, rid: Rid) -> Response:
    r = result_or_404(request, rid)
    workdir = Path(tempfile.mkdtemp(dir=request.app.state.root))
    try:
        content = res.nifti_gz(r, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _download(content, "application/gzip", f"{r.case}_mask.nii.gz")


# The page, health, limits and upload. Module level like result_routes: what they need
# (settings, model, store, gate) is on app.state, set by create_app and lifespan.
api_routes = APIRouter()


@api_routes.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@api_routes.get("/health", summary="liveness, model and load")
def health(request: Request) -> dict:
    s = request.app.state
    return {"status": "ok", "version": __version__, "model": _model_info(s.segmenter),
            "pending": s.gate.pending, "results": len(s.store)}


@api_routes.get("/api/limits", summary="upload limits (bytes, files, pixels)")
def get_limits(request: Request) -> dict:
    settings = request.app.state.settings
    return {**asdict(settings.limits), "result_ttl": settings.result_ttl, "notice": res.NOTICE}


async def _read(request: Request, filename: str | None) -> Upload:
    """The upload, streamed to a private work folder, validated and read (uploads.Upload);
    the folder is gone when this returns, whatever happened."""
    s = request.app.state
    limits = s.settings.limits
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large(limits.max_bytes)  # refuse before reading a byte
    workdir = Path(tempfile.mkdtemp(dir=s.root))
    s.active.add(workdir)
    try:
        await receive(request.stream(), workdir / "upload.bin", limits.max_bytes)
        return await run_in_threadpool(read_upload, workdir / "upload.bin", workdir,
                                       filename, limits)
    finally:
        await run_in_threadpool(shutil.rmtree, workdir, True)
        s.active.discard(workdir)


@api_routes.post("/api/uploads", status_code=201, openapi_extra=RAW_BODY,
                 summary="upload one slice (.tif/.png), a zipped patient folder or a NIfTI "
                         "volume (.nii/.nii.gz); segment it",
                 description="Send the file as the raw request body, e.g. `curl --data-binary "
                             "@patient.zip 'http://127.0.0.1:8000/api/uploads?filename="
                             "patient.zip'`. Returns the result id and its statistics.")
async def upload(request: Request,
                 filename: Annotated[str | None, Query(max_length=255)] = None,
                 pixel_mm: Annotated[float | None, Query(gt=0, le=50)] = None,
                 slice_mm: Annotated[float | None, Query(gt=0, le=100)] = None) -> dict:
    s = request.app.state
    up = await _read(request, filename)
    try:
        prediction = await s.gate.run(s.segmenter.predict, up.image)
    except Busy:
        raise HTTPException(503, "The server is busy segmenting other scans. "
                                 "Try again in a minute.") from None
    notes = list(up.notes)
    if up.volume is not None:  # the header knows the voxel size; the user's values win
        header_pixel, header_slice = res.header_spacing(up.volume)
        pixel_mm, slice_mm = pixel_mm or header_pixel, slice_mm or header_slice
        notes += filter(None, [channel_note(up.volume, s.segmenter.cfg.data)])
    result = res.Result(id=res.new_id(), case=up.case, image=up.image, mask=prediction.mask,
                        truth=up.truth, slice_numbers=up.slice_numbers,
                        seconds=prediction.seconds, pixel_mm=pixel_mm,
                        slice_mm=slice_mm, notes=notes, volume=up.volume)
    s.store.add(result)
    return summary(request, result)


async def _sweeper(app: FastAPI) -> None:
    """Every quarter ttl (at most a minute): drop expired results and orphaned work folders."""
    ttl = app.state.settings.result_ttl
    while True:
        await anyio.sleep(min(60.0, max(ttl / 4, 0.5)))
        app.state.store.sweep()
        await anyio.to_thread.run_sync(_sweep_dirs, app.state.root, ttl, set(app.state.active))


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the model off the event loop, make the private temporary folder, the result
    store and the inference gate; remove the folder on shutdown."""
    s = app.state
    s.segmenter = await anyio.to_thread.run_sync(_load, s.loader)
    s.root = Path(tempfile.mkdtemp(prefix="gliomaseg-web-", dir=s.settings.temp_root))
    s.store = res.ResultStore(s.settings.result_ttl, s.settings.max_results, s.clock)
    s.gate = InferenceGate(s.settings.max_concurrent, s.settings.max_queue)
    s.active = set()  # work folders in use by a request
    async with anyio.create_task_group() as tg:
        tg.start_soon(_sweeper, app)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
            s.gate.close()
            shutil.rmtree(s.root, ignore_errors=True)


async def _security_headers(request: Request, call_next):
    response = await call_next(request)
    if request.url.path not in DOCS:
        response.headers.update(SECURITY_HEADERS)
    return response


async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _data_error(_: Request, exc: DataError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def create_app(segmenter_or_loader: Any, settings: WebSettings | None = None,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The app around a Segmenter, or a zero-argument callable returning one (called at startup).

    `clock` is injectable so that tests can expire results without waiting.
    """
    app = FastAPI(title="gliomaseg", version=__version__, lifespan=lifespan,
                  description="Lower-grade glioma segmentation of brain MRI slices. "
                              + res.NOTICE)
    app.state.loader, app.state.clock = segmenter_or_loader, clock
    app.state.settings = settings or WebSettings()
    app.middleware("http")(_security_headers)
    app.add_exception_handler(UploadError, _upload_error)
    app.add_exception_handler(DataError, _data_error)
    app.include_router(api_routes)
    app.include_router(result_routes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
