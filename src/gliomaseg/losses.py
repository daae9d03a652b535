"""Training loss: MONAI's Dice + BCE (or Dice + focal) on logits.

Dice is computed over the whole batch (`batch=True`) rather than per image,
because most slices hold no tumour and a per-image soft Dice on an empty slice
is either undefined or rewards predicting nothing.

MONAI's DeepSupervisionLoss scores a deeply supervised network's list of logits (full
resolution first) against the target resized by nearest neighbour; a single tensor is
scored as it is. Its weights are normalised to sum 1, as nnU-Net does, so deep
supervision does not change the loss's scale against weight decay.
"""

from __future__ import annotations

from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss
from torch import nn

from .config import TrainConfig

DEEP_WEIGHTS = (4 / 7, 2 / 7, 1 / 7)  # full, half, quarter resolution (model.UNet)


def build_loss(cfg: TrainConfig) -> nn.Module:
    """Loss(logits (N, 1, H, W) or a list of them, target (N, 1, H, W) in {0, 1}) -> scalar."""
    if cfg.focal_gamma > 0:
        base: nn.Module = DiceFocalLoss(sigmoid=True, batch=True, gamma=cfg.focal_gamma,
                                        lambda_dice=cfg.dice_weight, lambda_focal=cfg.bce_weight)
    else:
        base = DiceCELoss(sigmoid=True, batch=True, lambda_dice=cfg.dice_weight,
                          lambda_ce=cfg.bce_weight)
    return DeepSupervisionLoss(base, weights=list(DEEP_WEIGHTS))
