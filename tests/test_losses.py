"""Training loss: Dice + BCE (or focal) on logits, with optional deep supervision."""

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss

from gliomaseg.config import TrainConfig
from gliomaseg.losses import DEEP_WEIGHTS, build_loss


def target(size=32):
    y = torch.zeros(2, 1, size, size)
    y[:, :, 8:20, 10:24] = 1
    return y


def test_one_logit_map_is_scored_by_weighted_dice_plus_bce():
    cfg = TrainConfig(dice_weight=1.5, bce_weight=0.5)
    logits = torch.randn(2, 1, 32, 32)
    expected = DiceCELoss(sigmoid=True, batch=True, lambda_dice=1.5, lambda_ce=0.5)(
        logits, target())
    torch.testing.assert_close(build_loss(cfg)(logits, target()), expected)


def test_focal_gamma_swaps_bce_for_focal_loss_which_discounts_easy_pixels():
    logits = 4 * (2 * target() - 1)  # confidently right everywhere: easy pixels
    logits[:, :, 0, 0] = 3.0  # one confidently wrong background pixel
    cfg = TrainConfig(dice_weight=0.0, bce_weight=1.0, focal_gamma=2.0)
    focal = build_loss(cfg)(logits, target())
    expected = DiceFocalLoss(sigmoid=True, batch=True, gamma=2.0, lambda_dice=0.0)(
        logits, target())
    torch.testing.assert_close(focal, expected)
    bce = build_loss(TrainConfig(dice_weight=0.0, bce_weight=1.0))(logits, target())
    assert focal < bce / 4  # the easy pixels' loss mostly vanishes


def test_a_deep_supervision_list_sums_each_scale_against_the_downsized_target():
    loss = build_loss(TrainConfig())
    y = target()
    outs = [torch.randn(2, 1, 32 // 2**i, 32 // 2**i) for i in range(3)]
    per_level = [loss(o, F.interpolate(y, size=o.shape[2:], mode="nearest-exact")) for o in outs]
    expected = sum(w * v for w, v in zip(DEEP_WEIGHTS, per_level, strict=True))
    torch.testing.assert_close(loss(outs, y), expected)
    assert sum(DEEP_WEIGHTS) == pytest.approx(1.0)  # the loss keeps its scale


def test_deep_supervision_loss_is_lowest_when_every_scale_is_right():
    loss = build_loss(TrainConfig())
    y = target()
    right = [20 * (F.interpolate(y, scale_factor=0.5**i, mode="nearest-exact") - 0.5)
             for i in range(3)]
    wrong_low = right[:2] + [-right[2]]  # full resolution right, quarter resolution inverted
    assert loss(right, y) < 0.01 < loss(wrong_low, y)
