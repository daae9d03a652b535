"""Train the U-Net: a plain loop you can read top to bottom.

Recipe: foreground-biased crops at native resolution with MONAI augmentations,
Dice + BCE, Adam with warm-up and cosine decay, bf16 autocast and channels-last on
CPU, validation PV-DSC on whole slices of held-out patients after every epoch,
early stopping, an optional moving average of the weights (`train.ema_decay`),
`best.pt`/`last.pt` written atomically, resume after a kill.
The same command runs under `torchrun --nproc_per_node N` with DDP.

Run folder: config.json, run.json (train/val patients), metrics.csv, curves.png,
train.log, best.pt, last.pt.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from . import metrics
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import Config, TrainConfig
from .data import DataError, iter_patients
from .inference import sigmoid, to_native, torch_logits_fn, use_bf16, volume_logits
from .losses import build_loss
from .model import build_model, count_parameters, dead_channels
from .preprocess import cached_volume, prepare_mask, stack_context
from .transforms import augment_sample, augmentations, crop_transforms, fill_missing_sequences
from .viz import plot_curves

METRIC_FIELDS = ["epoch", "train_loss", "grad_norm", "grad_norm_max", "val_loss", "val_dice",
                 "val_iou", "lr", "seconds", "cpu_seconds", "dead_channels"]


@dataclass
class Case:
    """A patient held in memory for training or validation."""

    name: str
    volume: np.ndarray  # (S, C, size, size) float32, normalised, before 2.5D stacking
    mask: np.ndarray  # (S, size, size) uint8 on the model grid
    native_mask: np.ndarray  # (S, H, W) uint8 on the native grid, for PV-DSC


def load_cases(root: Path, names: list[str], cfg: Config, use_cache: bool = True) -> list[Case]:
    cases = []
    for p in iter_patients(root, require_masks=True, cases=names):
        mask = prepare_mask(p.mask, cfg.data.size)[:, 0].astype(np.uint8)
        cases.append(Case(p.case, cached_volume(p, cfg.data, use_cache), mask, p.mask))
    return cases


def context_slice(volume: np.ndarray, index: int, k: int) -> np.ndarray:
    """Slice `index` with its k neighbours on each side: (C * (2k + 1), H, W)."""
    idx = np.clip(np.arange(index - k, index + k + 1), 0, volume.shape[0] - 1)
    return np.asarray(volume[idx], dtype=np.float32).reshape(-1, *volume.shape[2:])


class CropDataset(Dataset):
    """Item i of an epoch is one augmented training sample, a pure function of (seed, epoch, i).

    So a run is repeatable, resumable mid-way, and the same with any number of
    DataLoader workers or DDP ranks (DistributedSampler just deals out indices).
    """

    def __init__(self, cases: list[Case], cfg: Config):
        self.cases, self.cfg, self.epoch = cases, cfg, 0
        # (case, slice) pairs grouped by patient for sampling="patient" (patients without
        # tumour are left out of the tumour groups), and pooled for sampling="slice".
        self.all_by_case = [[(c, s) for s in range(len(case.mask))] for c, case in enumerate(cases)]
        tumour = [[(c, s) for c, s in group if cases[c].mask[s].any()] for group in self.all_by_case]
        self.tumour_by_case = [group for group in tumour if group]
        self.all_slices = [cs for group in self.all_by_case for cs in group]
        self.tumour_slices = [cs for group in self.tumour_by_case for cs in group]
        self.crops = crop_transforms(cfg.train.crop)
        self.augment = augmentations(cfg.augment)

    def __len__(self) -> int:
        return self.cfg.train.steps_per_epoch * self.cfg.train.batch_size

    def draw(self, rng: np.random.Generator) -> tuple[int, int, bool]:
        """(case index, slice index, whether the patch is to be centred near tumour)."""
        on_tumour = bool(self.tumour_slices) and rng.random() < self.cfg.train.foreground_fraction
        if self.cfg.train.sampling == "patient":
            groups = self.tumour_by_case if on_tumour else self.all_by_case
            pool = groups[rng.integers(len(groups))]
        else:
            pool = self.tumour_slices if on_tumour else self.all_slices
        c, s = pool[rng.integers(len(pool))]
        return c, s, on_tumour

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.train.seed, self.epoch, i])
        c, s, on_tumour = self.draw(rng)
        case = self.cases[c]
        seed = int(rng.integers(2**31))
        image = context_slice(case.volume, s, self.cfg.data.context)
        if self.cfg.data.channels == "rgb":
            image = fill_missing_sequences(image, self.cfg.augment.missing_sequence, rng)
        sample = {"image": image, "label": case.mask[s][None].astype(np.float32)}
        out = augment_sample(sample, self.crops, self.augment, on_tumour, seed)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["label"])


def lr_factor(step: int, total: int, warmup: int, time_used: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 1% of the base rate.

    Progress is the larger of the step fraction and `time_used`, the fraction of the
    time budget spent, so a run cut short by `train.max_minutes` still anneals
    (on a CPU the time budget, not the epoch count, is usually what ends a run).
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_used))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(model: torch.nn.Module, cases: list[Case], cfg: Config, loss_fn) -> dict:
    """Validation loss on the model grid and mean PV-DSC / IoU over patients on the native grid.

    Plain threshold, no TTA or post-processing: model selection judges the network.
    """
    model.eval()
    run = torch_logits_fn(model, bf16=use_bf16(cfg.train.bf16),
                          channels_last=cfg.train.channels_last)
    losses, dices, ious = [], [], []
    for case in cases:
        x = stack_context(np.asarray(case.volume), cfg.data.context)
        logits = volume_logits(run, x, batch_size=16)
        target = torch.from_numpy(case.mask[:, None]).float()
        losses.append(float(loss_fn(torch.from_numpy(logits)[:, None], target)))
        probs = sigmoid(logits)
        pred = to_native(probs, case.native_mask.shape[1:]) >= cfg.post.threshold
        counts = metrics.confusion(pred, case.native_mask)
        dices.append(metrics.dice(counts))
        ious.append(metrics.iou(counts))
    model.train()
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.nanmean(dices)),
            "val_iou": float(np.nanmean(ious))}


def setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device; initialises DDP when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def choose_cases(all_cases: list[str], cfg: Config, splits: Path | None, fold: int | None,
                 val_cases: list[str] | None) -> tuple[list[str], list[str]]:
    """(training, validation) patients: an explicit validation list, a fold of a splits file,
    or a seeded site-stratified pick. Training is every other patient, except that a splits
    fold's own "train" list is honoured (as nnU-Net's splits_final.json), so a fold can train
    on fewer patients, e.g. a fold of `split --pair-of` (`make nested`)."""
    from .data import read_splits, split_folds

    train_cases = None
    if val_cases:
        val = sorted(val_cases)
    elif splits is not None:
        folds, k = read_splits(splits), fold or 0
        if not 0 <= k < len(folds):
            raise DataError(f"{splits}: no fold {k} (it has {len(folds)})")
        val, train_cases = sorted(folds[k]["val"]), folds[k].get("train")
    else:
        n_folds = min(max(2, round(1 / cfg.train.val_fraction)), len(all_cases))
        val = split_folds(all_cases, n_folds, cfg.train.seed)[0]["val"]
    train = [c for c in all_cases if c not in set(val)] if train_cases is None \
        else sorted(train_cases)
    unknown = sorted(set(val + train) - set(all_cases))
    if unknown:
        raise DataError(f"no patient folder {unknown[0]} (named by --val-cases or --splits)")
    if set(train) & set(val):
        raise DataError(f"{sorted(set(train) & set(val))[0]}: both a training and a "
                        "validation patient")
    return train, val


class Logger:
    """Print on rank 0 and append the same line to train.log."""

    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        tqdm.write(message)
        with self.path.open("a") as fh:
            fh.write(message + "\n")


def read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= upto_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def train_epoch(net, batches: tqdm, optimizer, loss_fn, cfg: Config, device, autocast, lr_at,
                first_step: int, ema: AveragedModel | None = None) -> dict:
    """One pass over `batches` (a progress bar over the loader). Returns metrics.csv's
    training columns: "train_loss" (mean), "grad_norm" and "grad_norm_max" (mean and largest
    gradient norm before clipping, which show whether `train.grad_clip` acts) and "lr" (the
    last learning rate).

    `lr_at(step)` is the learning rate at the run's step `first_step`, `first_step + 1`, ...:
    it is set every step, so warm-up and cosine decay do not jump at epoch boundaries.
    `ema`, if given, averages the weights after every step.
    """
    model = net.module if isinstance(net, DistributedDataParallel) else net
    net.train()
    running, lr, steps, norms = 0.0, 0.0, 0, []
    for steps, (x, y) in enumerate(batches, 1):
        lr = lr_at(first_step + steps - 1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(device), y.to(device)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = loss_fn(net(x), y)  # the loss casts bf16 logits to fp32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(net.parameters(), cfg.train.grad_clip, norm)
        norms.append(norm.item())
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        running += loss.item()
        batches.set_postfix(loss=f"{running / steps:.4f}")
    return {"train_loss": running / max(steps, 1), "grad_norm": sum(norms) / max(steps, 1),
            "grad_norm_max": max(norms, default=0.0), "lr": lr}


@dataclass(frozen=True)
class Progress:
    """Where a run stands after `epoch` finished epochs. Its fields are saved in last.pt
    under the same names, so a killed run resumes with its early-stopping count and
    time budget intact."""

    epoch: int = 0
    best_dice: float = -1.0  # best validation PV-DSC so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one
    elapsed: float = 0.0  # seconds spent on the budget clock (train.budget_clock)

    @classmethod
    def from_checkpoint(cls, state: dict | None) -> Progress:
        return cls() if state is None else cls(**{k: state[k] for k in cls.__dataclass_fields__})

    def record(self, epoch: int, dice: float, seconds: float) -> Progress:
        """The run after `epoch`, which scored validation PV-DSC `dice` and took `seconds`."""
        elapsed = self.elapsed + seconds
        if dice > self.best_dice:
            return Progress(epoch, dice, epoch, 0, elapsed)
        return Progress(epoch, self.best_dice, self.best_epoch, self.bad_epochs + 1, elapsed)

    def stop_reason(self, cfg: TrainConfig) -> str | None:
        """Why the run should stop now (time budget or patience), or None to go on."""
        if cfg.max_minutes > 0 and self.elapsed > 60 * cfg.max_minutes:
            return "time budget reached"
        if self.epoch >= cfg.min_epochs and self.bad_epochs >= cfg.patience:
            return f"no better validation PV-DSC for {self.bad_epochs} epochs"
        return None


def run_config(cfg: Config, state: dict | None, start: dict | None) -> Config:
    """The config a run trains with: a resumed run keeps its own (`state`, its last.pt);
    fine-tuning from the checkpoint `start` keeps that network's data and model settings,
    since its weights only fit them, and takes augmentation and training from `cfg`."""
    if state is not None:
        return Config.from_dict(state["config"])
    if start is not None:
        saved = Config.from_dict(start["config"])
        return Config(data=saved.data, model=saved.model, augment=cfg.augment, train=cfg.train,
                      post=saved.post)
    return cfg


def validated_network(model: torch.nn.Module, ema: AveragedModel | None) -> torch.nn.Module:
    """The network that is validated and saved as a checkpoint's "model": the weight average
    when `train.ema_decay` is on, else the trained network itself."""
    return model if ema is None else ema.module


def save_epoch(run_dir: Path, rows: list[dict], model, optimizer, cfg: Config,
               progress: Progress, val_cases: list[str], ema: AveragedModel | None) -> None:
    """What a run writes after each epoch: metrics.csv and curves.png from `rows` (one per
    epoch), last.pt (weights, optimizer, RNG, progress) and best.pt when it improved.

    "model" is always the network that was validated: the average when `ema` is on, so
    evaluation and bundling need not know; last.pt then also keeps the trained weights."""
    write_metrics(run_dir / "metrics.csv", rows)
    plot_curves(rows, run_dir / "curves.png")
    judged = validated_network(model, ema)
    ckpt = {"model": judged.state_dict(), "config": cfg.to_dict(), "epoch": progress.epoch,
            "best_dice": progress.best_dice, "best_epoch": progress.best_epoch,
            "val_cases": val_cases}
    if progress.best_epoch == progress.epoch:
        save_checkpoint(run_dir / "best.pt", ckpt)
    extra = {} if ema is None else {"train_model": model.state_dict(),
                                    "ema_updates": int(ema.n_averaged)}
    save_checkpoint(run_dir / "last.pt", {**ckpt, **extra, "optimizer": optimizer.state_dict(),
                                          "torch_rng": torch.get_rng_state(),
                                          "bad_epochs": progress.bad_epochs,
                                          "elapsed": progress.elapsed})


def start_run(run_dir: Path, cfg: Config, data: Path, train_cases: list[str],
              val_cases: list[str], world: int) -> None:
    """The run folder with config.json and run.json, written before the first epoch so a
    run killed early still says what it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (run_dir / "run.json").write_text(json.dumps(
        {"data": str(data), "train": train_cases, "val": val_cases, "world_size": world},
        indent=2))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (`train.optimizer`; Nesterov momentum unless momentum is 0) over
    `model`'s weights; without `train.decay_norms`, 1-D parameters (batch-norm scales and
    shifts, biases) form a second group with no weight decay."""
    params = list(model.parameters())
    groups = [{"params": params}]
    if not cfg.decay_norms:
        groups = [{"params": [p for p in params if p.dim() > 1]},
                  {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_training(cfg: Config, device: torch.device, state: dict | None, start: dict | None
                   ) -> tuple[torch.nn.Module, torch.optim.Optimizer, AveragedModel | None]:
    """The network, its optimiser and its weight average (None unless `train.ema_decay`):
    fresh (seeded by `train.seed`), from the weights of `start` (fine-tuning), or as `state`
    (a resumed last.pt) left them, RNG included."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.data.in_channels, cfg.model).to(device)
    if start is not None:
        model.load_state_dict(model_from_checkpoint(start)[0].state_dict())
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    ema = None
    if cfg.train.ema_decay > 0:
        # use_buffers: batch-norm statistics are averaged too, so they match the weights
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay),
                            use_buffers=True)
    if state is not None:
        model.load_state_dict(state.get("train_model", state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if ema is not None:
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(state["ema_updates"])  # else its next update restarts it
    return model, optimizer, ema


def stop_code(progress: Progress, dice: float, cfg: TrainConfig, trial, log) -> int:
    """0 to go on, 1 to stop (time budget or patience), 2 when the Optuna `trial` (if any),
    told this epoch's validation PV-DSC `dice`, prunes the run."""
    pruned = 0
    if trial is not None:
        trial.report(dice, progress.epoch)
        pruned = 2 if trial.should_prune() else 0
    reason = progress.stop_reason(cfg)
    if reason:
        log(f"stopping: {reason}")
        return 1
    return pruned


def train(data: Path, run_dir: Path, cfg: Config, train_cases: list[str], val_cases: list[str],
          resume: bool = False, use_cache: bool = True, trial=None,
          init: Path | None = None) -> dict:
    """Train and return {"best_dice", "best_epoch", "pruned"}. Only rank 0 writes files.

    `init` (a checkpoint) starts from its weights: fine-tuning (see `run_config`).
    `trial` (optional, an Optuna trial) gets each epoch's validation PV-DSC and may prune.
    """
    rank, world, device = setup_distributed()
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "last.pt") if resume else None
    start = load_checkpoint(init) if init is not None and state is None else None
    cfg = run_config(cfg, state, start)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    # Weights of channels that stop firing decay into the denormal range (below 1.2e-38),
    # which x86 CPUs compute in slow microcode: 35% of one fp32 training run's weights
    # by epoch 12, whose train steps then ran 4.6x slower (README, "Denormal weights").
    # Flushing them to zero changes nothing a float32 result can show.
    torch.set_flush_denormal(True)
    if rank == 0:
        start_run(run_dir, cfg, data, train_cases, val_cases, world)
    log = Logger(run_dir / "train.log" if rank == 0 else None)
    model, optimizer, ema = build_training(cfg, device, state, start)
    progress = Progress.from_checkpoint(state)
    if start is not None:
        log(f"starting from the weights of {init}")
    if state is not None:
        log(f"resumed from {run_dir / 'last.pt'} at epoch {progress.epoch + 1}")
    rows = read_metrics(run_dir / "metrics.csv", progress.epoch) if rank == 0 else []

    log(f"loading {len(train_cases)} training and {len(val_cases)} validation patients")
    train_set = CropDataset(load_cases(data, train_cases, cfg, use_cache), cfg)
    val_set = load_cases(data, val_cases, cfg, use_cache) if rank == 0 else []
    sampler = DistributedSampler(train_set, shuffle=False) if world > 1 else None
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler,
                        num_workers=cfg.train.workers, persistent_workers=False)
    net = DistributedDataParallel(model) if world > 1 else model
    bf16 = use_bf16(cfg.train.bf16, device.type)
    log(f"U-Net: {count_parameters(model):,} parameters, input {cfg.data.in_channels} channels, "
        f"{len(train_set.tumour_slices)}/{len(train_set.all_slices)} training slices with tumour, "
        f"{world} process(es) on {device.type}, "
        + ("bf16" if bf16 else "fp32" + (" (no native bf16 here)" if cfg.train.bf16 else "")))

    loss_fn = build_loss(cfg.train)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    steps_per_epoch = max(1, cfg.train.steps_per_epoch // world)
    total_steps = steps_per_epoch * cfg.train.max_epochs
    warmup_steps = steps_per_epoch * cfg.train.warmup_epochs
    budget = 60 * cfg.train.max_minutes
    # [stop code (see stop_code), fraction of the time budget used]: decided on rank 0,
    # shared with all ranks
    control = torch.tensor([0.0, progress.elapsed / budget if budget else 0.0])

    def lr_at(step: int) -> float:  # step counts from the run's start, across epochs
        return cfg.train.lr * lr_factor(step, total_steps, warmup_steps, float(control[1]))

    for epoch in range(progress.epoch + 1, cfg.train.max_epochs + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        train_set.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False,
                   disable=rank != 0 or None)
        fit = train_epoch(net, bar, optimizer, loss_fn, cfg, device, autocast, lr_at,
                          (epoch - 1) * steps_per_epoch, ema)
        if rank == 0:
            judged = validated_network(model, ema)
            val = validate(judged, val_set, cfg, loss_fn)
            dead, channels = dead_channels(judged)  # see train.decay_norms
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            progress = progress.record(epoch, val["val_dice"],
                                       cpu if cfg.train.budget_clock == "cpu" else wall)
            # lr to 3 significant digits: 5 decimals would blur the end of the decay (3.6e-5)
            rows.append({"epoch": epoch,
                         **{k: round(v, 5) for k, v in {**fit, **val}.items() if k != "lr"},
                         "lr": f"{fit['lr']:.3g}", "seconds": round(wall, 1),
                         "cpu_seconds": round(cpu, 1), "dead_channels": dead})
            save_epoch(run_dir, rows, model, optimizer, cfg, progress, val_cases, ema)
            log(f"epoch {epoch}: loss {fit['train_loss']:.4f}  "
                f"grad norm {fit['grad_norm']:.2f} (max {fit['grad_norm_max']:.2f})  "
                f"val loss {val['val_loss']:.4f}  "
                f"val PV-DSC {val['val_dice']:.4f}  IoU {val['val_iou']:.4f}  "
                f"dead channels {dead}/{channels}  ({wall:.1f} s)"
                + ("  *best*" if progress.best_epoch == epoch else ""))
            control[0] = stop_code(progress, val["val_dice"], cfg.train, trial, log)
            control[1] = progress.elapsed / budget if budget else 0.0
        if world > 1:
            dist.broadcast(control, src=0)
        if control[0] > 0:
            break
    if world > 1:
        # Tear down together: a rank that destroys the group while its peer is still
        # talking to it can abort the peer under load ("terminate called ...").
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        log(f"best validation PV-DSC {progress.best_dice:.4f} at epoch {progress.best_epoch}; "
            f"checkpoint {run_dir / 'best.pt'}")
    return {"best_dice": progress.best_dice, "best_epoch": progress.best_epoch,
            "pruned": bool(control[0] == 2)}
