"""Inference latency and peak memory on a CPU, as ratios against a reference run alongside.

Configurations (each in its own subprocess, so peak RSS is that configuration's own):
  reference    fp32 NCHW eager PyTorch, 32-filter U-Net depth 4 at 256x256, RGB input
               (the usual Kaggle LGG notebook model), random weights
  eager-fp32   this project's model (--model), fp32 NCHW eager PyTorch
  eager-bf16   the same with bf16 autocast and channels-last
  onnx-fp32    the same exported to ONNX, run by ONNX Runtime
  onnx-int8    static int8 (QDQ) of the ONNX model, calibrated on the benchmark patient

Every configuration runs the same pipeline (`Segmenter.predict`: prepare_volume, the
network, resize to the native grid, threshold, post-processing); only the network and
its runtime differ. "slice" is one 256x256 slice with batch 1; "volume" is a whole
patient (batch 16). Peak memory is the worker's high-water RSS (VmHWM). Not
getrusage's ru_maxrss: Linux carries that over fork+exec, so every worker would report
the parent's peak (which exports and quantises). "+model" subtracts the RSS after
imports (torch, onnxruntime), which every configuration pays.
The "mask" column compares each configuration's volume mask with eager-fp32's.

  python benchmarks/bench_inference.py --model runs/r1/best.pt
  python benchmarks/bench_inference.py --quick          # a few seconds per configuration
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path("/work/cache/lgg/kaggle_3m")
CONFIGS = ["reference", "eager-fp32", "eager-bf16", "onnx-fp32", "onnx-int8"]


def proc_status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS now, VmHWM peak) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e3  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def load_volume(data: Path | None, case: str | None, slices: int) -> tuple[str, np.ndarray]:
    """A real patient (the one with most slices up to `slices`, or `case`); synthetic fallback."""
    from gliomaseg.data import find_patients, read_patient

    if data is not None and data.exists():
        folders = find_patients(data)
        if case:
            folders = [f for f in folders if f.name == case]
        folder = folders[0] if case else min(
            folders, key=lambda f: abs(len(list(f.glob("*[0-9].tif"))) - slices))
        return folder.name, read_patient(folder).image
    from gliomaseg.synth import make_case

    image, _ = make_case(np.random.default_rng(0), slices=slices, size=256)
    return "synthetic", image


def timed(fn, repeats: int, warm: bool = True) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up call when `warm`."""
    if warm:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_segmenter(name: str, args: argparse.Namespace):
    import torch

    from gliomaseg.checkpoint import load_checkpoint, model_from_checkpoint
    from gliomaseg.config import Config
    from gliomaseg.inference import Segmenter, onnx_logits_fn, read_onnx_metadata, torch_logits_fn
    from gliomaseg.model import build_model

    if name == "reference":
        cfg = Config().replace(model={"base_filters": 32, "depth": 4}, data={"context": 0})
        torch.manual_seed(0)
        net = build_model(cfg.data.in_channels, cfg.model).eval()
        return Segmenter(cfg, "torch", torch_logits_fn(net))
    if name.startswith("onnx"):
        path = Path(args.onnx_fp32 if name == "onnx-fp32" else args.onnx_int8)
        cfg = Config.from_dict(read_onnx_metadata(path)["config"])
        return Segmenter(cfg, "onnx", onnx_logits_fn(path, threads=args.threads))
    net, cfg = model_from_checkpoint(load_checkpoint(args.model))
    if name == "eager-bf16":
        net = net.to(memory_format=torch.channels_last)
        return Segmenter(cfg, "torch", torch_logits_fn(net, bf16=True, channels_last=True))
    return Segmenter(cfg, "torch", torch_logits_fn(net))


def worker(args: argparse.Namespace) -> None:
    """Measure one configuration; print one JSON line; save its volume mask."""
    import torch

    import gliomaseg.inference  # noqa: F401  (imports counted in the baseline RSS)

    torch.set_num_threads(args.threads)
    _, image = load_volume(args.data, args.case, args.slices)
    base = proc_status_mb("VmRSS")
    seg = build_segmenter(args.worker, args)
    one = image[len(image) // 2:len(image) // 2 + 1]
    slice_s = timed(lambda: seg.predict(one), args.repeats)
    np.save(args.mask_out, seg.predict(image).mask)  # also the warm-up for batch 16
    volume_s = timed(lambda: seg.predict(image), max(1, args.repeats // 5), warm=False)
    peak = proc_status_mb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # inherited; kept to show
    print(json.dumps({"name": args.worker, "slice_s": slice_s, "volume_s": volume_s,
                      "peak_mb": peak, "model_mb": peak - base, "ru_maxrss_mb": maxrss,
                      "slices": len(image)}))


def prepare_models(args: argparse.Namespace, tmp: Path, image: np.ndarray) -> None:
    """Export the --model to ONNX fp32 and int8 (calibrated on the benchmark volume)."""
    from gliomaseg.data import Patient
    from gliomaseg.export import calibration_batches, export_checkpoint, quantize_int8

    args.onnx_fp32, args.onnx_int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
    meta = export_checkpoint(args.model, args.onnx_fp32)
    from gliomaseg.config import Config

    cfg = Config.from_dict(meta["config"])
    patient = Patient("bench", image, None, list(range(len(image))), [])
    quantize_int8(args.onnx_fp32, args.onnx_int8, calibration_batches([patient], cfg.data, 64))
    (tmp / "model.int8.json").write_text((tmp / "model.json").read_text())


def untrained_checkpoint(tmp: Path) -> Path:
    """No --model and no bundled model: the default architecture with random weights."""
    import torch

    from gliomaseg.checkpoint import save_checkpoint
    from gliomaseg.config import Config
    from gliomaseg.model import build_model

    cfg = Config()
    torch.manual_seed(0)
    path = tmp / "untrained.pt"
    save_checkpoint(path, {"model": build_model(cfg.data.in_channels, cfg.model).state_dict(),
                           "config": cfg.to_dict()})
    return path


def run_worker(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads),
           "--slices", str(args.slices), "--repeats", str(args.repeats),
           "--mask-out", str(tmp / f"{name}.npy"), "--model", str(args.model),
           "--onnx-fp32", str(args.onnx_fp32), "--onnx-int8", str(args.onnx_int8)]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    if args.case:
        cmd += ["--case", args.case]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mask_agreement(a: np.ndarray, b: np.ndarray) -> str:
    differ = int((a != b).sum())
    union = int((a | b).sum())
    dice = 2 * int((a & b).sum()) / (int(a.sum()) + int(b.sum())) if union else float("nan")
    return f"{differ} px differ, Dice {dice:.4f}"


def table(rows: list[dict], masks: dict[str, np.ndarray]) -> str:
    ref = next(r for r in rows if r["name"] == "reference")
    lines = ["| configuration | slice (ms) | speed-up | volume (s) | speed-up | peak RSS (MB) "
             "| +model (MB) | memory vs ref | mask vs eager-fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        agree = ("(other model)" if r["name"] == "reference" else
                 "-" if r["name"] == "eager-fp32" else
                 mask_agreement(masks["eager-fp32"], masks[r["name"]]))
        lines.append(
            f"| {r['name']} | {r['slice_s'] * 1e3:.1f} | {ref['slice_s'] / r['slice_s']:.2f}x "
            f"| {r['volume_s']:.2f} | {ref['volume_s'] / r['volume_s']:.2f}x "
            f"| {r['peak_mb']:.0f} | {r['model_mb']:.0f} | {r['peak_mb'] / ref['peak_mb']:.2f}x "
            f"| {agree} |")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="checkpoint .pt (default: the bundled model)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists() else None,
                   help="kaggle_3m root or patient folder (default: synthetic if absent)")
    p.add_argument("--case", help="patient folder name (default: one with about --slices slices)")
    p.add_argument("--slices", type=int, default=40, help="target slices per volume")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per slice measurement")
    p.add_argument("--quick", action="store_true", help="3 repeats, 12 slices")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=CONFIGS)
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--mask-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--onnx-fp32", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--onnx-int8", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.repeats, args.slices = 3, 12
    names = ["reference", *[c for c in args.configs if c != "reference"]]
    if "eager-fp32" not in names:
        names.insert(1, "eager-fp32")  # the mask column compares against it
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model is None:
            from gliomaseg.inference import WEIGHTS_DIR

            bundled = WEIGHTS_DIR / "model.pt"
            args.model = bundled if bundled.is_file() else untrained_checkpoint(tmp)
        case, image = load_volume(args.data, args.case, args.slices)
        if args.quick:
            args.case = case if case != "synthetic" else None
        prepare_models(args, tmp, image)
        rows = [run_worker(n, args, tmp) for n in names]
        masks = {n: np.load(tmp / f"{n}.npy") for n in names}
    print(f"\nPatient {case}: {len(image)} slices of {image.shape[1]}x{image.shape[2]}; "
          f"model {args.model.name}; {args.threads} threads; {os.cpu_count()} CPUs; "
          f"median of {args.repeats} (slice) / {max(1, args.repeats // 5)} (volume) runs.\n")
    print(table(rows, masks))


if __name__ == "__main__":
    main()
