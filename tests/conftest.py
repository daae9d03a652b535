"""Shared fixtures: synthetic data in the Kaggle layout, a tiny trained model, real data when present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gliomaseg.config import Config
from gliomaseg.data import list_cases
from gliomaseg.synth import write_dataset
from gliomaseg.train import train

torch.set_num_threads(2)
SHARED_LGG = Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg"

# Small settings for tests: 64-pixel model grid, 8-filter U-Net, 30 steps (reaches val
# PV-DSC ~0.9 on the phantoms in a few seconds on 2 cores).
TINY = Config().replace(
    data={"size": 64, "context": 0, "channels": "rgb"},  # 2D keeps tests fast; 2.5D has its own
    model={"base_filters": 8, "depth": 3},
    train={"crop": 32, "batch_size": 8, "steps_per_epoch": 10, "max_epochs": 3,
           "warmup_epochs": 0, "bf16": False, "lr": 1e-2},
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's preprocessing cache."""
    monkeypatch.setenv("GLIOMASEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """4 synthetic patients x 12 slices of 128x128 in the Kaggle layout (read-only by convention)."""
    return write_dataset(tmp_path_factory.mktemp("synth"), cases=4, seed=1, slices=12, size=128)


@pytest.fixture(scope="session")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    """A run folder with a tiny model trained for a few seconds on the synthetic data."""
    run = tmp_path_factory.mktemp("tiny_run")
    os.environ.setdefault("GLIOMASEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    cases = list_cases(synth_root)
    train(synth_root, run, TINY, cases[:3], cases[3:], use_cache=False)
    return run


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run / "best.pt"


@pytest.fixture(scope="session")
def real_root(tmp_path_factory) -> Path:
    """3 real patients unpacked from ../shared/data/lgg; skipped when the data is absent."""
    if not (SHARED_LGG / "unpack.py").is_file():
        pytest.skip("real LGG data not available (../shared/data/lgg)")
    dest = tmp_path_factory.mktemp("real")
    subprocess.run([sys.executable, str(SHARED_LGG / "unpack.py"), str(dest), "--cases", "3"],
                   check=True, capture_output=True)
    return dest / "kaggle_3m"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (as a user would)."""
    return subprocess.run([sys.executable, "-m", "gliomaseg.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600,
                          stdin=subprocess.DEVNULL)
