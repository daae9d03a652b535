"""Pictures: training curves, slice overlays (truth and prediction outlines) and galleries."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here or in CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss and validation PV-DSC against epoch, from metrics.csv rows, saved as a PNG."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], label="train")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="Dice + BCE loss", title="Loss")
    ax_loss.legend()
    dice = [float(r["val_dice"]) for r in rows]
    ax_dice.plot(epochs, [d if not math.isnan(d) else None for d in dice], marker="o", ms=3)
    ax_dice.set(xlabel="epoch", ylabel="mean PV-DSC", title="Validation Dice per patient",
                ylim=(0, 1))
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
