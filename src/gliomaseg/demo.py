"""`gliomaseg demo` (what `make demo` runs): synthetic patients -> small model -> report.

No real data and no bundled model needed. OUT/data holds synthetic patients in the
Kaggle layout, OUT/run a training run on some of them, OUT/report the evaluation of
that model on patients it never saw (neither trained nor validated on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .evaluate import evaluate, load_for_evaluation
from .report import write_report
from .synth import case_name, write_dataset
from .train import train


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo: how many synthetic patients go to training, validation and test."""

    train: int
    val: int
    test: int
    slices: int
    size: int  # native slice size of the synthetic patients
    cfg: Config


# About a minute of training on 2 cores: an 8-filter U-Net on a 128-pixel grid (the 256-pixel
# slices are downsampled; metrics are on the native grid), 80 steps of 16 crops. Validation
# PV-DSC passes 0.9 by the fifth epoch. fp32, so any CPU runs it at a similar speed.
FULL = DemoPlan(train=8, val=2, test=4, slices=20, size=256, cfg=Config().replace(
    data={"size": 128},
    model={"base_filters": 8, "depth": 3, "dropout": 0.0},
    train={"crop": 64, "batch_size": 16, "steps_per_epoch": 16, "max_epochs": 5,
           "warmup_epochs": 0, "lr": 3e-3, "bf16": False, "patience": 5},
))
# For tests: seconds, and a model that has barely started learning.
QUICK = DemoPlan(train=3, val=1, test=2, slices=8, size=64, cfg=Config().replace(
    data={"size": 64},
    model={"base_filters": 4, "depth": 3, "dropout": 0.0},
    train={"crop": 32, "batch_size": 8, "steps_per_epoch": 4, "max_epochs": 1,
           "warmup_epochs": 0, "lr": 3e-3, "bf16": False},
))


def run_demo(out: Path, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Write OUT/data, OUT/run and OUT/report; returns the evaluation summary.

    The patients are named explicitly at every step, so stale folders left by an
    earlier demo in OUT/data are never picked up.
    """
    plan = QUICK if quick else FULL
    out = Path(out)
    n = plan.train + plan.val + plan.test
    log(f"writing {n} synthetic patients -> {out / 'data'}")
    data = write_dataset(out / "data", cases=n, seed=0, slices=plan.slices, size=plan.size)
    names = [case_name(i) for i in range(n)]
    train_cases, val_cases = names[:plan.train], names[plan.train:plan.train + plan.val]
    test_cases = names[plan.train + plan.val:]
    log(f"training on {len(train_cases)} patients, validating on {len(val_cases)} "
        f"-> {out / 'run'}")
    train(data, out / "run", plan.cfg, train_cases, val_cases, use_cache=False)
    log(f"evaluating on {len(test_cases)} held-out patients -> {out / 'report'}")
    model = load_for_evaluation(out / "run" / "best.pt")
    ev = evaluate(data, model.logits_fn, model.cfg, cases=test_cases)
    return write_report(out / "report", ev, model)
