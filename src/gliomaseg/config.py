"""One typed configuration for every stage; the only place defaults live.

Frozen dataclasses, saved as JSON with every run, checkpoint and exported model.
`Config.from_dict` rejects unknown keys, so a typo in a config file is an error,
not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

CHANNEL_NAMES = ("pre-contrast", "FLAIR", "post-contrast")


@dataclass(frozen=True)
class DataConfig:
    # "flair": FLAIR only (grayscale input), "rgb": all three sequences. FLAIR tied at 30
    # CPU minutes, won at 60 (README) and with the bundled recipe on two folds (MODEL.md),
    # and does not depend on sequences some patients lack.
    channels: Literal["rgb", "flair"] = "flair"
    # Model grid in pixels; slices are resized to size x size. 192 lost 0.015 on two folds
    # (MODEL.md).
    size: int = 256
    # 2.5D: neighbouring slices on each side (0 = plain 2D). 1 beat 0 on one fold (README);
    # configs/bundled.json uses 2, which beat 1 over five folds by a small margin (MODEL.md).
    context: int = 1
    # Per volume and channel, over the brain. (1, 99) lost 0.003 on two folds (MODEL.md).
    clip_percentiles: tuple[float, float] = (0.5, 99.5)

    @property
    def in_channels(self) -> int:
        per_slice = 3 if self.channels == "rgb" else 1
        return per_slice * (2 * self.context + 1)


@dataclass(frozen=True)
class ModelConfig:
    # Defaults of this section, of AugmentConfig and of the optimiser and loss in TrainConfig
    # are trial 3 of the README tuning run (3 significant digits); it beat the earlier
    # defaults at 6 and at 30 CPU minutes (README, "Hyperparameter search").
    base_filters: int = 8  # filters of the first encoder block; doubled at each level
    # Number of poolings (encoder levels below the first). 5 lost 0.004 on two folds with four
    # times the parameters (MODEL.md).
    depth: int = 4
    # Dropout in the bottleneck and decoder blocks. 0.15 scored level and 0 lost 0.004 on
    # two folds, both lower before post-processing (0.017, 0.025; MODEL.md).
    dropout: float = 0.0355
    # U-Nets whose logits are averaged. Ensembles are joined from separately trained runs
    # (`gliomaseg bundle RUN...`); a run trains one network.
    members: int = 1
    # Deep supervision (nnU-Net): while training, 1x1 heads on the decoder's half- and
    # quarter-resolution outputs are scored too (loss weights 4:2:1 from full resolution
    # down), which gives the deep layers a direct gradient. Inference uses the full-resolution
    # head only; the two extra heads add 50 parameters.
    deep_supervision: bool = False
    # "plain": two conv-BN-ReLU per level (the classic U-Net). "residual": the same
    # convolutions as ResNet basic blocks, with a 1x1 conv + BN shortcut around each pair, in
    # encoder, bottleneck and decoder. Residual lost 0.011 on four folds (MODEL.md).
    block: Literal["plain", "residual"] = "plain"
    # Nonlinearity after every batch norm. "leaky_relu" (slope 0.01, nnU-Net's default) keeps a
    # gradient below zero; it lost 0.003 on two folds and left as many channels dead
    # (`model.dead_channels`): they die of the weight decay (MODEL.md).
    activation: Literal["relu", "leaky_relu"] = "relu"


@dataclass(frozen=True)
class AugmentConfig:
    # Weak, as tuned, and kept so: stronger intensity changes (p 0.5, up to 20%) lost 0.008 on
    # five folds, stronger flips, rotations and zoom (p 0.5, 0.3 up to 15 degrees, 0.3 up to
    # 15%) 0.002 on two, 0.019 before post-processing (MODEL.md).
    flip: float = 0.143  # probability of a left-right flip
    rotate90: float = 0.143  # probability of a random multiple of 90 degrees
    rotate: float = 0.086  # probability of a small rotation
    rotate_degrees: float = 4.30
    scale: float = 0.0573  # probability of a zoom
    scale_range: float = 0.0430  # zoom in [1 - r, 1 + r]
    intensity: float = 0.086  # probability of intensity scale and shift (each)
    intensity_range: float = 0.0287
    # Probability of a gamma (contrast) change, as nnU-Net augments: intensities mapped to
    # [0, 1], raised to a gamma drawn from `gamma_range`, mapped back, then given the crop's
    # former mean and standard deviation again (MONAI's RandAdjustContrastd, retain_stats).
    # nnU-Net's p 0.3 lost 0.004 on two folds, 0.018 before post-processing (MODEL.md).
    gamma: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    # nnU-Net's other intensity augmentations, each a probability (nnU-Net's: 0.1, 0.2, 0.25):
    # Gaussian noise with a std drawn from [0, noise_std] (the image is z-scored, so 0.316 is
    # nnU-Net's variance of up to 0.1); Gaussian blur with a sigma (pixels) drawn from
    # blur_sigma; and simulated low resolution, nearest-neighbour down to a zoom drawn from
    # low_resolution_zoom and bilinear back up. nnU-Net's three probabilities together lost
    # 0.010 on two folds, 0.017 before post-processing (MODEL.md).
    noise: float = 0.0
    noise_std: float = 0.316
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    low_resolution: float = 0.0
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    # Probability of replacing pre- and/or post-contrast by FLAIR, as the Kaggle data does
    # for patients missing a sequence (8 of the 81 here), who can fail with all three
    # sequences. With data.channels=rgb, p 0.2 gained 0.020 on two folds (interval across
    # zero) and did not rescue FG_A60K (MODEL.md); FLAIR only needs none of it.
    missing_sequence: float = 0.0


# MONAI would silently clip these to [0, 1]; a typo such as 3 for 0.3 is an error instead.
AUGMENT_PROBABILITIES = ("flip", "rotate90", "rotate", "scale", "intensity", "gamma", "noise",
                         "blur", "low_resolution", "missing_sequence")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    lr: float = 3.6e-3  # 2e-3 and 5e-3 each lost 0.005-0.006 on two folds (MODEL.md)
    weight_decay: float = 3.02e-4  # Adam's L2; 0 and 3e-3 lost 0.006 and 0.042 on two folds (MODEL.md)
    # "adamw": weight decay decoupled from the gradient (Loshchilov & Hutter 2019), each step
    # shrinks the weights by lr * weight_decay whatever their gradient's scale; "adam" adds it
    # to the gradient as L2, which Adam's normalisation then rescales per weight. AdamW with
    # decay 0.01 and 0.05 lost 0.005 and 0.008 on two folds (MODEL.md). "sgd": SGD with
    # Nesterov momentum (`momentum`), nnU-Net's optimiser (lr 0.01, momentum 0.99, weight
    # decay 3e-5, gradient norm clipped at 12); with those settings it lost 0.016 on two
    # folds (MODEL.md).
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    # Weight decay on the 1-D parameters too (batch-norm scales and shifts, biases). With
    # Adam's L2 it turns whole channels off: once a channel stops mattering to the loss, the
    # decay alone moves its weights, in steps of about lr after Adam's normalisation, to
    # zero (filter-level sparsity, Mehta et al. 2019). False decays only the convolution
    # weights, as nanoGPT and timm do: on two folds it left about 210 of 857 channels dead
    # instead of 320-367 and scored level (-0.002), 0.023 lower before post-processing; with
    # the decay also cut to 1e-4, 92 and 99 dead and -0.005 (MODEL.md).
    decay_norms: bool = True
    momentum: float = 0.99  # "sgd" only
    # Largest gradient norm; 0 clips nothing (metrics.csv logs the norm). 1.0 with Adam lost
    # 0.009 on two folds (MODEL.md).
    grad_clip: float = 0.0
    batch_size: int = 32  # 16 with twice the steps lost 0.004 on two folds (MODEL.md)
    # Training patch at native resolution; whole slices at test time. Whole slices (batch 8)
    # lost 0.069 on five folds, 160 (batch 20) 0.006 and 96 (batch 57) 0.015 on two (MODEL.md).
    crop: int = 128
    # Share of patches centred near tumour. 0.8 lost 0.012 on five folds and nnU-Net's third
    # (0.33) lost 0.011 on two (MODEL.md).
    foreground_fraction: float = 0.6
    # How a patch's slice is drawn (from tumour slices or from all, per foreground_fraction).
    # "slice": uniformly over the training set's slices, so a patient weighs by its number of
    # slices (3 to 37 tumour slices here). "patient": a patient first, uniformly, then one of
    # its slices, so each patient weighs the same, as in the per-patient Dice (PV-DSC).
    # "patient" scored level (-0.003) on two folds, 0.028 lower before post-processing (MODEL.md).
    sampling: Literal["slice", "patient"] = "slice"
    steps_per_epoch: int = 100
    # Epochs, and the length of the cosine schedule. On two folds 45 scored level and 20 lost
    # 0.033 (MODEL.md).
    max_epochs: int = 30
    patience: int = 8  # epochs without a better validation PV-DSC before stopping
    min_epochs: int = 3
    warmup_epochs: int = 1  # linear warm-up; 0 lost 0.007 on two folds, 0.031 plain (MODEL.md)
    # A Dice share of 0.8 lost 0.008 on five folds, 0.4 lost 0.003 on two (MODEL.md).
    dice_weight: float = 1.168
    bce_weight: float = 0.832  # weight of the pixel-wise term: BCE, or focal loss if focal_gamma > 0
    # Focal loss (Lin et al. 2017) in place of BCE: each pixel's BCE scaled by (1 - p_t)**gamma,
    # which shrinks the easy background pixels' share. 0 is plain BCE; 2 lost 0.007 on two folds,
    # and 0.006 with bce_weight raised by a third to 1.109 (MODEL.md).
    focal_gamma: float = 0.0
    # bf16 autocast where bf16 is native (AVX-512 bf16 or AMX: about 4x the fp32 matmul rate;
    # GPUs); other CPUs emulate it at about a tenth of the fp32 rate, so they run fp32 instead
    # (inference.use_bf16).
    bf16: bool = True
    channels_last: bool = True
    # Exponential moving average of the weights (and batch-norm statistics), torch's
    # AveragedModel: validation, best.pt and last.pt's "model" hold the average, which
    # smooths the epoch-to-epoch noise of the last steps. 0 turns it off; 0.999 averages over
    # about 1,000 steps (5 epochs of the bundled recipe). On two folds it scored level with
    # the bundled networks before post-processing and 0.005 lower after (MODEL.md).
    ema_decay: float = 0.0
    val_fraction: float = 0.2  # when no fold or cases are given
    max_minutes: float = 0.0  # time budget; 0 means none
    budget_clock: Literal["wall", "cpu"] = "wall"  # "cpu": this process's CPU time, fair on a shared machine
    num_threads: int = 0  # torch threads; 0 keeps torch's default
    workers: int = 0  # DataLoader worker processes (0: load in the training process)


@dataclass(frozen=True)
class PostConfig:
    threshold: float = 0.5
    tta: bool = False  # average over flips at test time
    # Which flips: "left-right" (2 passes) or "both" axes, nnU-Net's 2D mirroring (4 passes).
    # Left-right: axial brain slices are near-symmetric left-right, not up-down; on the
    # bundled networks' own folds "both" did not score higher (MODEL.md, "Flip TTA on both
    # axes").
    tta_mirror: Literal["left-right", "both"] = "left-right"
    largest_component: bool = True  # keep only the largest 3D component per patient (README)
    # "Largest" by summed probability (mass) or by voxel count. Mass: on the 81-patient
    # cross-validation it changed one patient, whose largest-by-voxels component was a
    # false region, from 0.00 to 0.72, and no other (MODEL.md).
    largest_by: Literal["probability", "voxels"] = "probability"
    min_size: int = 0  # drop 3D components smaller than this many voxels
    fill_holes: bool = False


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    post: PostConfig = field(default_factory=PostConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        return _build(cls, raw, "config")

    def replace(self, **sections: dict[str, Any]) -> Config:
        """New config with some fields of some sections changed, e.g. train={"lr": 1e-4}."""
        merged = self.to_dict()
        for name, values in sections.items():
            if name not in merged:
                raise ConfigError(f"unknown config section {name!r}")
            merged[name] = {**merged[name], **values}
        return Config.from_dict(merged)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
            continue
        kwargs[name] = _coerce(default, value, f"{where}.{name}")
        hint = hints[name]
        if get_origin(hint) is Literal and value not in get_args(hint):
            raise ConfigError(f"{where}.{name} must be one of {', '.join(map(repr, get_args(hint)))}")
    return cls(**kwargs)


def _coerce(default: Any, value: Any, where: str) -> Any:
    """Check a leaf value against the type of its default (ints are accepted for floats)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ConfigError(f"{where}: expected {len(default)} values, got {value!r}")
        return tuple(_coerce(d, v, where) for d, v in zip(default, value, strict=True))
    if type(value) is not type(default):
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return value


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express (`_build` checks types and Literal choices)."""
    checks = [
        (cfg.data.size >= 16 and cfg.data.size % 2**cfg.model.depth == 0,
         "data.size must be a multiple of 2**model.depth"),
        (cfg.data.context >= 0, "data.context must be >= 0"),
        (cfg.train.crop % 2**cfg.model.depth == 0, "train.crop must be a multiple of 2**model.depth"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (cfg.model.members >= 1, "model.members must be >= 1"),
        (cfg.model.depth >= 3 or not cfg.model.deep_supervision,
         "model.deep_supervision needs model.depth >= 3 (heads at half and quarter resolution)"),
        (0.0 < cfg.post.threshold < 1.0, "post.threshold must be in (0, 1)"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
        (cfg.train.focal_gamma >= 0.0, "train.focal_gamma must be >= 0"),
        (0.0 <= cfg.train.momentum < 1.0, "train.momentum must be in [0, 1)"),
        (cfg.train.grad_clip >= 0.0, "train.grad_clip must be >= 0"),
        (0.0 < cfg.augment.gamma_range[0] <= cfg.augment.gamma_range[1],
         "augment.gamma_range must be [low, high] with 0 < low <= high"),
        (0.0 <= cfg.augment.blur_sigma[0] <= cfg.augment.blur_sigma[1],
         "augment.blur_sigma must be [low, high] with 0 <= low <= high"),
        (0.0 < cfg.augment.low_resolution_zoom[0] <= cfg.augment.low_resolution_zoom[1] <= 1.0,
         "augment.low_resolution_zoom must be [low, high] with 0 < low <= high <= 1"),
        (0.0 <= cfg.augment.scale_range < 1.0, "augment.scale_range must be in [0, 1)"),
        (min(cfg.augment.rotate_degrees, cfg.augment.intensity_range, cfg.augment.noise_std) >= 0,
         "augment.rotate_degrees, intensity_range and noise_std must be >= 0"),
    ] + [(0.0 <= getattr(cfg.augment, k) <= 1.0, f"augment.{k} is a probability, in [0, 1]")
         for k in AUGMENT_PROBABILITIES]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a JSON file, then `section.key=value` overrides (values parsed as JSON)."""
    raw = Config().to_dict()
    if path is not None:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if "config" in loaded and isinstance(loaded["config"], dict):
            loaded = loaded["config"]  # accept a tuning result that wraps the config
        raw = Config.from_dict(_deep_merge(raw, loaded)).to_dict()
    for item in overrides or []:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # bare strings such as data.channels=flair
        raw = _deep_merge(raw, {section: {name: value}})
    return validate(Config.from_dict(raw))


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_hash(section: Any) -> str:
    """Short stable hash of a config section (keys the preprocessing cache)."""
    text = json.dumps(dataclasses.asdict(section), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
