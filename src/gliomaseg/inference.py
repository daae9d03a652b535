"""Inferers: whole-slice probabilities, flip TTA and 3D post-processing for a patient volume.

Every path that turns an image into a mask (validation during training,
`evaluate`, `predict`, the web app) goes through `probabilities` and
`postprocess`, so they agree by construction.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skimage.measure
import torch
import torch.nn.functional as F
from monai.transforms import FillHoles, KeepLargestConnectedComponent, RemoveSmallObjects

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .config import Config, PostConfig
from .data import DataError, Patient, read_image, read_patient
from .preprocess import cache_dir, prepare_volume

# logits_fn: (N, C, H, W) float32 array -> (N, 1, H, W) float32 logits array
LogitsFn = Callable[[np.ndarray], np.ndarray]


def use_bf16(requested: bool, device_type: str = "cpu") -> bool:
    """Whether to run bf16 autocast: when asked (`train.bf16`) and the device computes bf16
    natively, i.e. a GPU or a CPU with AVX-512 bf16 or AMX. Other CPUs (AVX2 only: most
    laptops, AMD Zen 3) emulate bf16: the bundled recipe trained at 0.11x its fp32 rate on one
    thread there (`python benchmarks/bench_train.py precision`), so they run fp32."""
    if not requested or device_type != "cpu":
        return requested
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def torch_logits_fn(model: torch.nn.Module, bf16: bool = False,
                    channels_last: bool = False) -> LogitsFn:
    """Wrap an eval-mode PyTorch model as a LogitsFn (bf16 autocast on CPU when asked)."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.tensor(x).to(memory_format=fmt)  # a copy: x may be a read-only memmap
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), ctx:
            return model(t).float().numpy()

    return run


# Test-time flips as (flip rows, flip columns), the identity first; each is its own inverse.
MIRRORS = {"left-right": ((False, False), (False, True)),
           "both": ((False, False), (False, True), (True, False), (True, True))}


def flip(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """`a` (..., H, W) flipped up-down (`rows`) and/or left-right (`cols`)."""
    return a[..., ::-1 if rows else 1, ::-1 if cols else 1]


def mirrored_logits(logits_fn: LogitsFn, x: np.ndarray, batch_size: int = 16,
                    mirror: str = "left-right") -> list[np.ndarray]:
    """Logits (S, H, W) of a prepared volume x (S, C, H, W) under each flip of
    MIRRORS[mirror], each flipped back; the first is the plain pass."""
    return [flip(volume_logits(logits_fn, np.ascontiguousarray(flip(x, *f)), batch_size), *f)
            for f in MIRRORS[mirror]]


def volume_logits(logits_fn: LogitsFn, x: np.ndarray, batch_size: int = 16,
                  tta: bool = False, mirror: str = "left-right") -> np.ndarray:
    """Logits (S, H, W) of a prepared volume x (S, C, H, W), in batches of slices.

    With `tta`, the logits of the image and of its flips (MIRRORS[mirror], flipped
    back) are averaged.
    """
    if tta:
        return np.mean(mirrored_logits(logits_fn, x, batch_size, mirror), axis=0)
    out = np.empty((x.shape[0], *x.shape[2:]), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        out[start:start + batch_size] = logits_fn(batch)[:, 0]
    return out


def probabilities(logits_fn: LogitsFn, x: np.ndarray, batch_size: int = 16,
                  tta: bool = False, mirror: str = "left-right") -> np.ndarray:
    """Sigmoid probabilities (S, H, W) of a prepared volume x (S, C, H, W)."""
    return sigmoid(volume_logits(logits_fn, x, batch_size, tta, mirror))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free form


def to_native(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (S, h, w) probabilities to the native slice grid (S, H, W), bilinearly.

    Metrics are computed on the native grid, so a model trained at another size is
    scored on the same pixels as the ground truth.
    """
    if probs.shape[1:] == tuple(shape):
        return probs
    t = torch.from_numpy(probs)[:, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[:, 0].numpy()


def postprocess(probs: np.ndarray, cfg: PostConfig) -> np.ndarray:
    """Threshold (S, H, W) patient probabilities, then 3D post-processing -> uint8 {0, 1} mask.

    Components are 3D (26-connected across slices), so a tumour that spans slices is
    one object. Order: drop components below `min_size` voxels, keep the largest (by
    summed probability or by voxels, `cfg.largest_by`), fill holes. MONAI's transforms,
    except the probability-weighted choice, which MONAI lacks: scikit-image's labelling
    (what MONAI uses) and a weighted count.
    """
    m = torch.from_numpy((probs >= cfg.threshold).astype(np.uint8))[None]  # (1, S, H, W)
    if cfg.min_size > 0 and m.any():
        with warnings.catch_warnings():  # scikit-image >= 0.26 deprecates MONAI's call
            warnings.simplefilter("ignore", FutureWarning)
            m = RemoveSmallObjects(min_size=cfg.min_size, connectivity=3)(m)
    if cfg.largest_component and m.any():
        if cfg.largest_by == "voxels":
            m = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(m)
        else:
            m = torch.from_numpy(heaviest_component(np.asarray(m[0]), probs))[None]
    if cfg.fill_holes and m.any():
        m = FillHoles(applied_labels=[1])(m)
    return np.asarray(m[0], dtype=np.uint8)


def heaviest_component(mask: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The 26-connected 3D component of `mask` with the largest summed probability.

    A large, lukewarm false region loses to a smaller tumour the network is sure of.
    """
    labels = skimage.measure.label(mask, connectivity=3)
    mass = np.bincount(labels.ravel(), weights=probs.ravel().astype(np.float64))
    mass[0] = -1.0  # background
    return (labels == int(mass.argmax())).astype(np.uint8)


def segment(logits_fn: LogitsFn, x: np.ndarray, native_shape: tuple[int, int],
            post: PostConfig, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Prepared volume (S, C, h, w) -> (mask (S, H, W) uint8 {0,1}, probabilities (S, H, W))."""
    probs = to_native(probabilities(logits_fn, x, batch_size=batch_size, tta=post.tta,
                                    mirror=post.tta_mirror), native_shape)
    return postprocess(probs, post), probs


# --- public model API: load_model -> Segmenter.predict -> Prediction ---------------------------

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ORT_THREADS = 2  # the target machine is an ordinary 2-core CPU


@dataclass
class Prediction:
    """Result of `Segmenter.predict` for one volume.

    mask: (S, H, W) uint8 {0, 1} on the native grid, post-processed.
    probabilities: (S, H, W) float32 in [0, 1] on the native grid (before post-processing).
    seconds: wall time of preprocessing + network + post-processing.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    seconds: float


def onnx_logits_fn(path: Path, threads: int = ORT_THREADS) -> LogitsFn:
    """Wrap an exported .onnx model as a LogitsFn run by ONNX Runtime on `threads` CPU threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for foreign or broken files
        raise CheckpointError(f"{path}: not a loadable ONNX model "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from None
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def as_volume(volume: Any) -> np.ndarray:
    """Any accepted input -> (S, H, W, 3) uint8.

    Accepts a Patient, a patient folder or slice file path, or an array shaped
    (S, H, W, 3), (S, H, W) (grayscale, taken as FLAIR, as data.read_image does) or
    (H, W, 3) (one RGB slice). Non-uint8 arrays are scaled to 0-255 by their maximum.
    """
    if isinstance(volume, Patient):
        return volume.image
    if isinstance(volume, str | Path):
        path = Path(volume)
        if path.is_dir():
            return read_patient(path).image
        if path.is_file():
            return read_image(path)[None]
        raise DataError(f"{path}: no such file or directory")
    array = np.asarray(volume)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        top = array.max() if array.size else 0.0
        array = (array / top * 255.0 if top > 0 else array).clip(0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[None]  # one RGB slice; a volume 3 pixels wide is not a real input
    elif array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape[1:3]) < 8:
        raise DataError(f"expected an (S, H, W, 3), (S, H, W) or (H, W, 3) image, "
                        f"got shape {np.shape(volume)}")
    return np.ascontiguousarray(array)


@dataclass
class Segmenter:
    """A loaded model: the config it was trained with and a LogitsFn (PyTorch or ONNX Runtime).

    Both backends share `prepare_volume` and `segment`, so they apply exactly the
    same pre- and post-processing.
    """

    cfg: Config
    backend: str
    logits_fn: LogitsFn
    source: Path | None = None
    batch_size: int = 16

    def predict(self, volume: Any, post: PostConfig | None = None) -> Prediction:
        """volume: (S,H,W,3) / (S,H,W) / (H,W,3) uint8 array, a Patient, or a patient folder path.

        post: post-processing settings; None uses the model's own (cfg.post).
        """
        image = as_volume(volume)
        start = time.perf_counter()
        x = prepare_volume(image, self.cfg.data)
        mask, probs = segment(self.logits_fn, x, image.shape[1:3], post or self.cfg.post,
                              batch_size=self.batch_size)
        return Prediction(mask=mask, probabilities=probs.astype(np.float32, copy=False),
                          seconds=time.perf_counter() - start)


def bundled_model_path() -> Path:
    """weights/model.pt; CheckpointError when absent."""
    path = WEIGHTS_DIR / "model.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no bundled model in this installation; train one with 'gliomaseg train "
            "DATA -o RUN' and pass --model RUN/best.pt (or load_model('RUN/best.pt'))")
    return path


def bundled_onnx_path() -> Path:
    """The bundled model as ONNX: exported into <cache>/onnx on first use, reused after."""
    from .export import exported_once  # export imports this module

    folder = cache_dir() / "onnx"
    try:
        return exported_once(bundled_model_path(), folder)
    except OSError as exc:
        raise CheckpointError(f"cannot export the bundled model into {folder} ({exc.strerror}); "
                              "set GLIOMASEG_CACHE to a writable folder") from None


def onnx_metadata_path(onnx_path: Path) -> Path:
    """The JSON written beside an exported model: <stem>.json (model.onnx -> model.json)."""
    return Path(onnx_path).with_suffix(".json")


def read_onnx_metadata(onnx_path: Path) -> dict:
    """model.json beside an .onnx file (falls back to a plain model.json in the same folder)."""
    candidates = [onnx_metadata_path(onnx_path), Path(onnx_path).with_name("model.json")]
    meta_path = next((p for p in candidates if p.is_file()), None)
    if meta_path is None:
        raise CheckpointError(f"{onnx_path}: no {candidates[0].name} beside it "
                              "(export with 'gliomaseg export' writes both)")
    try:
        meta = json.loads(meta_path.read_text())
        Config.from_dict(meta["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: not a gliomaseg model.json ({exc})") from None
    return meta


def load_model(path: str | Path | None = None, backend: str = "auto") -> Segmenter:
    """Load a model for prediction.

    backend "auto": ONNX Runtime for an .onnx file, PyTorch otherwise (the bundled model
    included, so a first prediction does not pay for an export). path None: the bundled
    model (weights/model.pt). With backend="onnx" it is exported
    on first use into the cache folder (`export.exported_once`, about 15 s) and that file
    is reused after: the package ships the weights once, not twice (the fp32 ONNX file of
    the ensemble alone would be 10 MB). A .pt path is a checkpoint (e.g. a training run's
    best.pt); a .onnx path needs its model.json beside it (written by `gliomaseg export`).
    backend "torch" needs a .pt, "onnx" an .onnx file.
    """
    if backend not in ("auto", "torch", "onnx"):
        raise CheckpointError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'onnx'")
    if backend == "auto":
        backend = "onnx" if path is not None and Path(path).suffix.lower() == ".onnx" else "torch"
    if path is None:
        path = bundled_model_path() if backend == "torch" else bundled_onnx_path()
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file")
    is_onnx = path.suffix.lower() == ".onnx"
    if backend == "onnx":
        if not is_onnx:
            raise CheckpointError(f"{path}: the onnx backend needs an .onnx model; "
                                  f"make one with 'gliomaseg export --model {path} -o model.onnx'")
        cfg = Config.from_dict(read_onnx_metadata(path)["config"])
        return Segmenter(cfg=cfg, backend="onnx", logits_fn=onnx_logits_fn(path), source=path)
    if is_onnx:
        raise CheckpointError(f"{path}: an .onnx model needs --backend onnx (or auto)")
    model, cfg = model_from_checkpoint(load_checkpoint(path))
    # fp32, not bf16, even for models trained with bf16: measured on 3 real validation
    # patients, bf16 autocast was ~3x faster but changed 250-390 mask pixels per patient
    # (probabilities by up to 0.02), so torch and ONNX masks would no longer agree. For
    # speed use the ONNX backend: fp32-identical masks and faster still (bench_inference.py).
    return Segmenter(cfg=cfg, backend="torch", logits_fn=torch_logits_fn(model), source=path)
