"""Training loss: MONAI's Dice + BCE on logits.

Dice is computed over the whole batch (`batch=True`) rather than per image,
because most slices hold no tumour and a per-image soft Dice on an empty slice
is either undefined or rewards predicting nothing.
"""

from __future__ import annotations

from monai.losses import DiceCELoss
from torch import nn

from .config import TrainConfig


def build_loss(cfg: TrainConfig) -> nn.Module:
    """Loss(logits (N, 1, H, W), target (N, 1, H, W) in {0, 1}) -> scalar."""
    return DiceCELoss(sigmoid=True, batch=True, lambda_dice=cfg.dice_weight,
                      lambda_ce=cfg.bce_weight)
