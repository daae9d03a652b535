"""Training speed of the default recipe against the dataset author's way of training.

    python benchmarks/bench_train.py throughput [--data DIR] [--steps 6]
    python benchmarks/bench_train.py budget RUN_DIR [RUN_DIR ...]
    python benchmarks/bench_train.py precision [--config configs/bundled.json] [--steps 4]
    python benchmarks/bench_train.py layout [--config configs/bundled.json] [--steps 4]
    python benchmarks/bench_train.py denormal RUN_DIR/last.pt [--steps 4]

`throughput`: slices (or crops) per second for one train step including data
loading, interleaved in the same process so machine noise hits both alike:
  - reference: the dataset author's recipe as a plain loop - 32-filter U-Net,
    whole 256x256 slices, batch 16, fp32, NCHW, eager;
  - default:   this project's recipe - Config() defaults (8 filters, 2.5D, 128 px
    crops at native resolution, batch 32, bf16 autocast, channels-last), through the
    real CropDataset and DataLoader.
`precision`: one recipe's train step with bf16 autocast against fp32 (the reference),
interleaved; tells whether this CPU computes bf16 natively (`inference.use_bf16`).
`layout`: the same with channels-last memory against NCHW (the reference), at the
precision training would use on this CPU; plus the data pipeline alone, for its share.
`denormal`: train steps from a checkpoint's weights with denormal floats computed
(the reference, x86's default) against flushed to zero (`torch.set_flush_denormal`, what
`train` sets), interleaved; then inference with its weights as stored against as
`model_from_checkpoint` loads them (denormals zeroed); and how many weights are denormal.
`budget`: validation PV-DSC reached by 15, 30 and 60 minutes of training, read
from a run's metrics.csv (cumulative epoch seconds, validation included; CPU
seconds when the run's budget clock was "cpu").
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gliomaseg.checkpoint import flush_denormals, load_checkpoint, model_from_checkpoint
from gliomaseg.config import Config, ModelConfig, load_config
from gliomaseg.data import list_cases
from gliomaseg.inference import use_bf16
from gliomaseg.losses import build_loss
from gliomaseg.model import build_model
from gliomaseg.synth import write_dataset
from gliomaseg.train import CropDataset, load_cases

DEFAULT_DATA = Path("/work/cache/lgg/kaggle_3m")


def loop(cfg: Config, cases, model_cfg: ModelConfig, steps: int, bf16: bool | None = None,
         model: torch.nn.Module | None = None, flush: bool | None = None):
    """A generator: each next() runs one optimiser step (data loading included). `bf16`
    None: as training would run cfg on this CPU (`use_bf16`); True/False: forced. `model`:
    start from these weights (default: a fresh model_cfg network). `flush`: set
    torch.set_flush_denormal before each step, so interleaved loops can differ in it."""
    bf16 = use_bf16(cfg.train.bf16) if bf16 is None else bf16
    dataset = CropDataset(cases, cfg)
    loader = iter(DataLoader(dataset, batch_size=cfg.train.batch_size,
                             num_workers=cfg.train.workers))
    model = model if model is not None else build_model(cfg.data.in_channels, model_cfg)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = build_loss(cfg.train)
    for _ in range(steps):
        if flush is not None:
            torch.set_flush_denormal(flush)
        x, y = next(loader)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x.contiguous(memory_format=fmt)).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield cfg.train.batch_size


def bench_data(data: Path) -> Path:
    """DATA if it is a folder, else 4 synthetic patients written to a temporary folder."""
    return data if data.is_dir() else write_dataset(Path(tempfile.mkdtemp()), cases=4, slices=24)


def throughput(args: argparse.Namespace) -> None:
    data = bench_data(args.data)
    default = Config()
    reference = default.replace(
        data={"context": 0},  # the author's model sees one 3-channel slice
        train={"crop": 0, "batch_size": 16, "bf16": False, "channels_last": False,
               "foreground_fraction": 0.0, "steps_per_epoch": args.steps + 2},
        augment={"rotate": 0.0, "scale": 0.0, "intensity": 0.0},
    )
    default = default.replace(train={"steps_per_epoch": args.steps + 2})
    cases = load_cases(data, list_cases(data)[: args.cases], default)
    recipes = {"reference (32 filters, 256 px, batch 16, fp32 NCHW)":
               (reference, ModelConfig(base_filters=32, dropout=0.0)),
               f"gliomaseg default ({default.model.base_filters} filters, 2.5D, 128 px crops, "
               f"batch 32, {'bf16' if use_bf16(default.train.bf16) else 'fp32'}, channels-last)":
               (default, default.model)}
    runs = {name: loop(cfg, cases, m, args.steps + 1) for name, (cfg, m) in recipes.items()}
    print_rates(runs, args.steps)
    print(f"\n{torch.get_num_threads()} threads, {args.steps} timed steps each, data: {data}")


def print_rates(runs: dict, steps: int) -> None:
    """Time `steps` interleaved steps of each loop (after one untimed warm-up step) and print
    samples/s with the ratio to the first, the reference."""
    for gen in runs.values():
        next(gen)  # warm-up step, untimed
    totals = {name: [0, 0.0] for name in runs}
    for _ in range(steps):  # interleave so all see the same machine state
        for name, gen in runs.items():
            t = time.perf_counter()
            totals[name][0] += next(gen)
            totals[name][1] += time.perf_counter() - t
    ref_rate = None
    print("| recipe | samples/s | ratio to reference |\n|---|---|---|")
    for name, (n, seconds) in totals.items():
        rate = n / seconds
        ref_rate = ref_rate or rate
        print(f"| {name} | {rate:.1f} | {rate / ref_rate:.2f}x |")


def recipe_setup(args: argparse.Namespace):
    """(data folder, --config with room for the timed steps, its loaded patients)."""
    data = bench_data(args.data)
    cfg = load_config(args.config).replace(train={"steps_per_epoch": args.steps + 2})
    return data, cfg, load_cases(data, list_cases(data)[: args.cases], cfg)


def precision(args: argparse.Namespace) -> None:
    data, cfg, cases = recipe_setup(args)
    runs = {f"{args.config}, {mode}": loop(cfg, cases, cfg.model, args.steps + 1, bf16=bf16)
            for mode, bf16 in (("fp32 (reference)", False), ("bf16 autocast", True))}
    print_rates(runs, args.steps)
    print(f"\nCPU: {torch.backends.cpu.get_cpu_capability()}, native bf16: {use_bf16(True)} "
          f"(so training runs {'bf16' if use_bf16(cfg.train.bf16) else 'fp32'}); "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps each, data: {data}")


def layout(args: argparse.Namespace) -> None:
    data, cfg, cases = recipe_setup(args)
    runs = {f"{args.config}, {name}": loop(cfg.replace(train={"channels_last": last}), cases,
                                           cfg.model, args.steps + 1)
            for name, last in (("NCHW (reference)", False), ("channels-last", True))}
    print_rates(runs, args.steps)
    batches = iter(DataLoader(CropDataset(cases, cfg), batch_size=cfg.train.batch_size,
                              num_workers=cfg.train.workers))
    next(batches)
    t = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    print(f"\ndata pipeline alone: {args.steps * cfg.train.batch_size / (time.perf_counter() - t):.1f}"
          f" samples/s; precision {'bf16' if use_bf16(cfg.train.bf16) else 'fp32'}; "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps each, data: {data}")


def stored_model(state: dict) -> torch.nn.Module:
    """The checkpoint's network with its weights exactly as stored: model_from_checkpoint's,
    with the denormals it zeroes put back."""
    model, _ = model_from_checkpoint(state)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state["model"].items()})
    return model


def forwards(model: torch.nn.Module, x: torch.Tensor, steps: int):
    """A generator: each next() runs one eval-mode forward pass of x."""
    model.eval()
    for _ in range(steps):
        with torch.inference_mode():
            model(x)
        yield x.shape[0]


def denormal(args: argparse.Namespace) -> None:
    state = load_checkpoint(args.checkpoint)
    cfg = Config.from_dict(state["config"]).replace(train={"steps_per_epoch": args.steps + 2})
    data = bench_data(args.data)
    cases = load_cases(data, list_cases(data)[: args.cases], cfg)
    weights = list(stored_model(state).parameters())
    tiny = sum(int((flush_denormals(w) != w).sum()) for w in weights)
    runs = {f"{args.checkpoint}, {name}": loop(cfg, cases, cfg.model, args.steps + 1,
                                               model=stored_model(state), flush=flush)
            for name, flush in (("denormals computed (reference)", False),
                                ("denormals flushed to zero", True))}
    print_rates(runs, args.steps)
    torch.set_flush_denormal(False)  # inference: only the weights differ
    x = torch.randn(8, cfg.data.in_channels, cfg.data.size, cfg.data.size)
    print("\nInference, whole slices, batch 8, denormals computed:\n")
    print_rates({f"{args.checkpoint}, weights as stored (reference)": forwards(
                    stored_model(state), x, args.steps + 1),
                 "model_from_checkpoint (denormal weights zeroed)": forwards(
                    model_from_checkpoint(state)[0], x, args.steps + 1)}, args.steps)
    print(f"\n{tiny:,} of {sum(w.numel() for w in weights):,} weights denormal; precision "
          f"{'bf16' if use_bf16(cfg.train.bf16) else 'fp32'}; {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps each, data: {data}")


def budget(args: argparse.Namespace) -> None:
    print("| run | PV-DSC by 15 min | by 30 min | by 60 min | best (epoch, minutes) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        with (run / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        clock = json.loads((run / "config.json").read_text())["train"].get("budget_clock", "wall")
        column = "cpu_seconds" if clock == "cpu" else "seconds"
        minutes, best_at = 0.0, {}
        best = (-1.0, 0, 0.0)
        for r in rows:
            minutes += float(r[column]) / 60
            dice = float(r["val_dice"])
            if dice > best[0]:
                best = (dice, int(r["epoch"]), minutes)
            for limit in (15, 30, 60):
                if minutes <= limit:
                    best_at[limit] = max(best_at.get(limit, -1.0), dice)
        cells = [f"{best_at[m]:.3f}" if m in best_at else "-" for m in (15, 30, 60)]
        print(f"| {run.name} | {' | '.join(cells)} | {best[0]:.3f} ({best[1]}, {best[2]:.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.set_defaults(func=throughput)
    for name, func in (("precision", precision), ("layout", layout)):
        p = sub.add_parser(name)
        p.add_argument("--config", type=Path, default=Path("configs/bundled.json"))
        p.add_argument("--data", type=Path, default=DEFAULT_DATA)
        p.add_argument("--cases", type=int, default=8)
        p.add_argument("--steps", type=int, default=4)
        p.set_defaults(func=func)
    p = sub.add_parser("denormal")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.set_defaults(func=denormal)
    p = sub.add_parser("budget")
    p.add_argument("runs", type=Path, nargs="+")
    p.set_defaults(func=budget)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
