"""U-Net: encoder, bottleneck and decoder with skip connections, batch norm and dropout.

Returns logits (apply a sigmoid for probabilities), as segmentation_models_pytorch
does, so that losses can use the numerically stable BCE-with-logits. The layers
are the ones ONNX Runtime fuses well (Conv + BN + ReLU or LeakyReLU), so the exported model
is fast on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


def nonlinearity(name: str) -> nn.Module:
    """ReLU, or nnU-Net's LeakyReLU with slope 0.01, which keeps a gradient below zero."""
    return nn.LeakyReLU(0.01, inplace=True) if name == "leaky_relu" else nn.ReLU(inplace=True)


def conv_block(cin: int, cout: int, dropout: float, act: str) -> nn.Sequential:
    """Two 3x3 conv -> BN -> `nonlinearity(act)`, with dropout between them when dropout > 0."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nonlinearity(act),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
               nonlinearity(act)]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """ResNet's basic block: relu(conv_bn_relu_conv_bn(x) + shortcut(x)), (N, cin, H, W) -> (N, cout, H, W).

    Same convolutions and receptive field as `conv_block`, plus the shortcut, the path
    nnU-Net's residual-encoder presets credit for their gains. Every U-Net block changes
    the width (the encoder doubles it, the decoder halves the concatenation), so the
    shortcut is always a projection: 1x1 conv + BN.
    """

    def __init__(self, cin: int, cout: int, dropout: float, act: str):
        super().__init__()
        self.body = conv_block(cin, cout, dropout, act)[:-1]  # its last nonlinearity comes after the sum
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nonlinearity(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class UNet(nn.Module):
    """in (N, in_channels, H, W) -> logits (N, 1, H, W); H and W multiples of 2**depth.

    With `cfg.deep_supervision`, a network in training mode returns a list instead: the
    logits at full, half and quarter resolution, for `losses.build_loss` (nnU-Net's design).
    In eval mode it always returns the full-resolution logits, so inference and export do
    not change.
    """

    def __init__(self, in_channels: int, cfg: ModelConfig):
        super().__init__()
        widths = [cfg.base_filters * 2**i for i in range(cfg.depth + 1)]
        block = ResidualBlock if cfg.block == "residual" else conv_block
        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoder.append(block(cin, w, 0.0, cfg.activation))  # no dropout: features are raw
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = block(widths[-2], widths[-1], cfg.dropout, cfg.activation)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(w_low, w, 2, stride=2))
            self.decoder.append(block(2 * w, w, cfg.dropout, cfg.activation))
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Heads on the decoder outputs at half and quarter resolution (the lowest decoder
        # level is left out, as in nnU-Net: at 1/8 of a 128-pixel crop a tumour is a few pixels).
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(w, 1, 1) for w in widths[1:3]) if cfg.deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        deep = self.aux_heads is not None and self.training
        decoded = []  # kept only for deep supervision, so inference frees them as it goes
        for up, block, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
            if deep:
                decoded.append(x)
        if not deep:
            return self.head(x)
        half, quarter = decoded[-2], decoded[-3]  # config.validate: depth >= 3
        return [self.head(x), self.aux_heads[0](half), self.aux_heads[1](quarter)]


class Ensemble(nn.Module):
    """Independently trained U-Nets of one shape: in (N, C, H, W) -> mean logits (N, 1, H, W).

    Logits are averaged, as the flip TTA does, so the output is still a logit and every
    consumer (losses, thresholds, ONNX export) treats an ensemble as one network. The
    members are trained as separate runs (one per cross-validation fold, as nnU-Net ships
    its models) and joined by `checkpoint.bundle`.
    """

    def __init__(self, in_channels: int, cfg: ModelConfig):
        super().__init__()
        self.members = nn.ModuleList(UNet(in_channels, cfg) for _ in range(cfg.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def build_model(in_channels: int, cfg: ModelConfig) -> nn.Module:
    """A UNet, or an Ensemble of cfg.members UNets (state-dict keys members.<i>.*)."""
    return UNet(in_channels, cfg) if cfg.members == 1 else Ensemble(in_channels, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dead_channels(model: nn.Module, tol: float = 1e-6) -> tuple[int, int]:
    """(dead, all) output channels over every convolution of `model`; dead: all of the
    channel's weights within +-tol, so it passes on nothing but its batch-norm shift.

    Adam's L2 weight decay switches channels off this way (`train.decay_norms`), which a
    parameter count does not show: it measures how much of the network is left.
    """
    dead = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            w = m.weight.detach()
            if isinstance(m, nn.ConvTranspose2d):  # stored (in, out, kH, kW)
                w = w.transpose(0, 1)
            dead += int((w.abs().flatten(1).amax(dim=1) <= tol).sum())
            total += w.shape[0]
    return dead, total
