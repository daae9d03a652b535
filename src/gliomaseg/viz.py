"""Pictures: training curves, slice overlays (truth and prediction outlines) and galleries."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # files only; but keep Jupyter's inline figures working
    matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.lines  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from scipy.ndimage import binary_erosion  # noqa: E402


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
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


PRED_RGB = (255, 64, 32)  # predicted tumour: red-orange fill and outline
TRUTH_RGB = (32, 255, 96)  # ground truth: green outline


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask's 1-pixel inner border (pixels with a background 4-neighbour)."""
    m = np.asarray(mask, dtype=bool)
    return m & ~binary_erosion(m, border_value=0)


def overlay_rgb(flair: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None,
                alpha: float = 0.35) -> np.ndarray:
    """FLAIR in gray with the prediction filled (alpha) and outlined, truth outlined in green.

    flair (H, W) uint8; pred and truth (H, W) {0, 1}. Returns (H, W, 3) uint8. Plain
    NumPy (no figure), so it is fast enough for every slice of a prediction run.
    """
    gray = np.repeat(np.asarray(flair, dtype=np.float32)[..., None], 3, axis=-1)
    colour = np.asarray(PRED_RGB, dtype=np.float32)
    p = np.asarray(pred, dtype=bool)
    gray[p] = (1 - alpha) * gray[p] + alpha * colour
    gray[outline(p)] = colour
    if truth is not None:
        gray[outline(np.asarray(truth, dtype=bool))] = TRUTH_RGB
    return gray.round().clip(0, 255).astype(np.uint8)


# --- evaluation report figures (returned as PNG bytes, to embed in report.html) ---------------

# The same colours as overlay_rgb, so that report and prediction pictures read alike; the
# prediction is also filled and the truth only outlined, so they differ without colour too.
TRUTH_COLOUR = matplotlib.colors.to_hex(np.asarray(TRUTH_RGB) / 255)
PRED_COLOUR = matplotlib.colors.to_hex(np.asarray(PRED_RGB) / 255)
SITE_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
                "#e15759", "#bab0ac", "#ff9da7")


def figure_png(fig, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def plot_dice_distribution(dice: list[float]) -> bytes:
    """Histogram of per-patient PV-DSC in [0, 1] with its mean and median marked.

    NaN (both empty, excluded from the means) are left out, as in the aggregate.
    """
    values = np.asarray([d for d in dice if not math.isnan(d)], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#4e79a7", edgecolor="white")
    if values.size:
        ax.axvline(values.mean(), color="#222222", lw=1.5, label=f"mean {values.mean():.3f}")
        ax.axvline(np.median(values), color="#e15759", lw=1.5, ls="--",
                   label=f"median {np.median(values):.3f}")
        ax.legend(loc="upper left", frameon=False)
    ax.set(xlim=(0, 1), xlabel="PV-DSC (Dice per patient volume)", ylabel="patients")
    ax.yaxis.get_major_locator().set_params(integer=True)
    _tidy(ax)
    return figure_png(fig)


def plot_per_case(cases: list[str], dice: list[float], sites: list[str]) -> bytes:
    """Bar chart of PV-DSC per patient, sorted, coloured by acquisition site.

    Patients whose Dice is undefined (both empty) are marked "n/a" at zero.
    """
    order = sorted(range(len(cases)), key=lambda i: (-1.0 if math.isnan(dice[i]) else dice[i]))
    site_list = sorted(set(sites))
    colours = {s: SITE_COLOURS[i % len(SITE_COLOURS)] for i, s in enumerate(site_list)}
    width = min(16.0, max(5.6, 0.16 * len(cases) + 1.5))
    fig, ax = plt.subplots(figsize=(width, 3.4))
    xs = np.arange(len(order))
    heights = [0.0 if math.isnan(dice[i]) else dice[i] for i in order]
    ax.bar(xs, heights, color=[colours[sites[i]] for i in order], width=0.8)
    for x, i in zip(xs, order, strict=True):
        if math.isnan(dice[i]):
            ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [_short_case(cases[i]) for i in order], rotation=90,
                  fontsize=7 if len(cases) > 30 else 8)
    ax.set(ylim=(0, 1), xlim=(-0.7, len(order) - 0.3), ylabel="PV-DSC")
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    handles = [matplotlib.patches.Patch(color=colours[s], label=s) for s in site_list]
    ax.legend(handles=handles, title="site", loc="lower left", bbox_to_anchor=(0, 1.0),
              frameon=False, ncol=len(site_list), fontsize=8, title_fontsize=8,
              alignment="left")
    _tidy(ax)
    return figure_png(fig)


def plot_gallery(flair: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                 row_titles: list[str]) -> bytes:
    """One row per slice: FLAIR (whole slice), then ground truth, prediction and
    `overlay_rgb` of both, zoomed to a square around the tumour (marked on the FLAIR).

    flair (k, H, W) uint8, truth and pred (k, H, W) {0, 1}; row_titles has k entries.
    The zoom makes 1-pixel boundary errors visible at report size.
    """
    k = flair.shape[0]
    fig, axes = plt.subplots(k, 4, figsize=(11.0, 2.9 * k), squeeze=False)
    columns = ("FLAIR", "ground truth (zoom)", "prediction (zoom)", "overlay (zoom)")
    for row in range(k):
        ax_mri, ax_truth, ax_pred, ax_both = axes[row]
        y0, y1, x0, x1 = focus_window(truth[row] | pred[row])
        crop = (slice(y0, y1), slice(x0, x1))
        ax_mri.imshow(flair[row], cmap="gray", vmin=0, vmax=255)
        if (y1 - y0, x1 - x0) != flair[row].shape:
            ax_mri.add_patch(matplotlib.patches.Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="#ffd54f", lw=1.2))
        _mask_panel(ax_truth, flair[row][crop], truth[row][crop], TRUTH_COLOUR)
        _mask_panel(ax_pred, flair[row][crop], pred[row][crop], PRED_COLOUR)
        ax_both.imshow(overlay_rgb(flair[row][crop], pred[row][crop], truth[row][crop]),
                       interpolation="nearest")
        ax_mri.set_ylabel(row_titles[row], fontsize=9)
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
    handles = [matplotlib.lines.Line2D([], [], color=TRUTH_COLOUR, lw=2,
                                       label="ground truth (outline)"),
               matplotlib.patches.Patch(color=PRED_COLOUR, label="prediction (filled)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return figure_png(fig, dpi=100)


def focus_window(mask: np.ndarray, margin: int = 16, min_side: int = 96
                 ) -> tuple[int, int, int, int]:
    """Square (y0, y1, x0, x1) around a (H, W) mask's pixels plus `margin`, at least
    `min_side` (so some anatomy stays around a small lesion), inside the image.
    The whole image when the mask is empty or the square would not be smaller.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0, h, 0, w
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 + 2 * margin
    side = int(max(side, min_side))
    if side >= min(h, w):
        return 0, h, 0, w

    def start(lo: int, hi: int, size: int) -> int:
        return int(np.clip((lo + hi + 1) // 2 - side // 2, 0, size - side))

    y0, x0 = start(ys.min(), ys.max(), h), start(xs.min(), xs.max(), w)
    return y0, y0 + side, x0, x0 + side


def _mask_panel(ax, flair: np.ndarray, mask: np.ndarray, colour: str) -> None:
    """The mask filled in its colour over a dimmed MRI, so its position stays readable."""
    ax.imshow(flair, cmap="gray", vmin=0, vmax=255 * 3)  # dimmed to a third
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[..., :3] = matplotlib.colors.to_rgb(colour)
    rgba[..., 3] = mask.astype(bool) * 0.9
    ax.imshow(rgba, interpolation="nearest")


def _short_case(case: str) -> str:
    """TCGA_CS_4941_19960909 -> CS_4941 (the date adds nothing on an axis)."""
    parts = case.split("_")
    return "_".join(parts[1:3]) if len(parts) >= 3 and parts[0] == "TCGA" else case


def _tidy(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
