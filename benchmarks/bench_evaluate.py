"""`evaluate` throughput on a CPU, as ratios against a naive baseline measured in the same run.

  baseline     what a straightforward loop does: `inference.probabilities` once without and
               once with TTA (3 network passes per slice), fp32 NCHW
  shared       evaluate's `native_probabilities`: the plain pass is reused for TTA (2 passes)
  shared-bf16  the same with bf16 autocast and channels-last (how training validates)

Each runs the full per-patient work of `evaluate` with all five variants (prepare_volume,
network, resize to native, post-processing, metrics). Model: --model, or the default
architecture with random weights (speed only). Data: --data (patients with masks), or
synthetic patients.

  python benchmarks/bench_evaluate.py --data /work/cache/lgg/kaggle_3m --patients 4
  python benchmarks/bench_evaluate.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gliomaseg import evaluate as ev
from gliomaseg.checkpoint import load_checkpoint, model_from_checkpoint
from gliomaseg.config import Config
from gliomaseg.data import list_cases
from gliomaseg.inference import probabilities, to_native, torch_logits_fn
from gliomaseg.model import build_model
from gliomaseg.synth import write_dataset


def naive_probabilities(logits_fn, x, native_shape, tta_settings, batch_size=16,
                        mirror="left-right"):
    return {t: to_native(probabilities(logits_fn, x, batch_size, tta=t, mirror=mirror),
                         native_shape) for t in sorted(tta_settings)}


def run(data: Path, cases: list[str], logits_fn, cfg: Config, shared: bool) -> float:
    original = ev.native_probabilities
    if not shared:
        ev.native_probabilities = naive_probabilities
    try:
        start = time.perf_counter()
        result = ev.evaluate(data, logits_fn, cfg, cases=cases)
        seconds = time.perf_counter() - start
    finally:
        ev.native_probabilities = original
    slices = sum(r.shape[0] for r in result.cases)
    return seconds / slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 small synthetic patients")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        model, cfg = model_from_checkpoint(load_checkpoint(args.model))
    else:
        cfg = Config().replace(data={"size": 64 if args.quick else 256})
        model = build_model(cfg.data.in_channels, cfg.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or write_dataset(Path(tmp), cases=2 if args.quick else args.patients,
                                          slices=8 if args.quick else 24,
                                          size=64 if args.quick else 256)
        cases = list_cases(data)[:2 if args.quick else args.patients]
        fp32 = torch_logits_fn(model)
        bf16 = torch_logits_fn(model, bf16=True, channels_last=True)
        run(data, cases[:1], fp32, cfg, True)  # warm-up (allocator, oneDNN kernels)
        base = run(data, cases, fp32, cfg, shared=False)
        rows = [("baseline", base), ("shared", run(data, cases, fp32, cfg, shared=True)),
                ("shared-bf16", run(data, cases, bf16, cfg, shared=True))]
    print(f"{len(cases)} patients, {args.threads} threads; seconds per slice (all 5 variants)")
    for name, s in rows:
        print(f"  {name:<12} {s:.4f} s/slice  speed-up x{base / s:.2f}")


if __name__ == "__main__":
    main()
