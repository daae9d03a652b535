"""Command line: parse, call the library, format. One `cmd_<verb>` per verb.

Every expected failure (bad data, bad config, bad checkpoint, refusing to
overwrite) becomes one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .data import DataError

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A request the CLI refuses (e.g. overwriting results without --overwrite)."""


EXPECTED_ERRORS = (DataError, ConfigError, CheckpointError, UsageError)


def _fmt(text: str) -> str:
    return text.strip("\n")


def ensure_output(path: Path, overwrite: bool, inputs: list[Path] = ()) -> Path:
    """Refuse to write into an input folder, or over existing results without --overwrite."""
    path = Path(path)
    for src in inputs:
        src = Path(src).resolve()
        if path.resolve() == src or src in path.resolve().parents:
            raise UsageError(f"{path}: output must not be inside the input {src}")
    if path.exists() and (path.is_file() or any(path.iterdir())) and not overwrite:
        raise UsageError(f"{path}: already exists and is not empty; pass --overwrite to replace it")
    return path


# --- check -------------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from .data import check_dataset, summarize

    report = check_dataset(args.data, require_masks=not args.no_masks)
    s = summarize(report.patients)
    if args.json:
        print(json.dumps({**s, "problems": report.problems}, indent=2))
    else:
        sites = ", ".join(f"{k} {v}" for k, v in s["sites"].items()) or "-"
        print(f"patients: {s['patients']}\nslices: {s['slices']}\n"
              f"slices with tumour: {s['slices_with_tumour']}\n"
              f"tumour pixels: {s['tumour_pixels']}\nsites: {sites}")
        if args.verbose:
            for case, n in s["slices_per_patient"].items():
                print(f"  {case}: {n} slices")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if report.ok:
        print("dataset is usable")
        return 0
    print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
    return 1


# --- split -------------------------------------------------------------------------------------

def cmd_split(args: argparse.Namespace) -> int:
    from .data import list_cases, split_folds

    folds = split_folds(list_cases(args.data), args.folds, args.seed)
    ensure_output(args.output, args.overwrite, [args.data])
    args.output.write_text(json.dumps(folds, indent=2))
    sizes = ", ".join(str(len(f["val"])) for f in folds)
    print(f"{len(folds)} folds (validation patients per fold: {sizes}) -> {args.output}")
    return 0


# --- synth -------------------------------------------------------------------------------------

def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import write_dataset

    ensure_output(args.output, args.overwrite)
    root = write_dataset(args.output, cases=args.cases, seed=args.seed, slices=args.slices,
                         size=args.size)
    print(f"{args.cases} synthetic patients x {args.slices} slices -> {root}")
    return 0


# --- download ----------------------------------------------------------------------------------

def cmd_download(args: argparse.Namespace) -> int:
    from .data import download_dataset

    ensure_output(args.dest, args.overwrite)
    root = download_dataset(args.dest)
    print(f"dataset ready in {root}\nnext: gliomaseg check {root}")
    return 0


# --- train -------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from .data import list_cases
    from .train import choose_val_cases, train

    cfg = load_config(args.config, args.set)
    if args.resume:
        run_dir = args.resume
        saved = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() \
            else None
        if saved is None or not (run_dir / "last.pt").is_file():
            raise UsageError(f"{run_dir}: nothing to resume (no run.json/last.pt)")
        data, train_cases, val_cases = Path(saved["data"]), saved["train"], saved["val"]
    else:
        if args.data is None or args.output is None:
            raise UsageError("train needs DATA and -o RUN_DIR (or --resume RUN_DIR)")
        run_dir, data = ensure_output(args.output, args.overwrite, [args.data]), args.data
        cases = list_cases(data)
        val_cases = choose_val_cases(cases, cfg, args.splits, args.val_fold, args.val_cases)
        train_cases = [c for c in cases if c not in set(val_cases)]
        if not train_cases or not val_cases:
            raise UsageError(f"{data}: need at least one training and one validation patient")
    result = train(data, run_dir, cfg, train_cases, val_cases, resume=bool(args.resume),
                   use_cache=not args.no_cache)
    print(f"best validation PV-DSC {result['best_dice']:.4f} (epoch {result['best_epoch']}) "
          f"-> {run_dir / 'best.pt'}")
    return 0


# --- parser ------------------------------------------------------------------------------------

def _add(sub, name: str, help_: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_,
                          epilog="examples:\n" + _fmt(examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="JSON config (e.g. a tuning result)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliomaseg",
        description="Segment lower-grade glioma (FLAIR abnormality) in brain MRI slices "
                    "with a U-Net on a CPU. Data: the Kaggle LGG MRI Segmentation layout.",
        epilog="Run 'gliomaseg VERB --help' for examples of each verb.")
    parser.add_argument("--version", action="version", version=f"gliomaseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = _add(sub, "check", "check a kaggle_3m dataset and summarise it", """
  gliomaseg check ~/data/kaggle_3m
  gliomaseg check ~/data/kaggle_3m/TCGA_CS_4941_19960909 --verbose
  gliomaseg check scans/ --no-masks --json""")
    p.add_argument("data", type=Path, help="kaggle_3m root or one patient folder")
    p.add_argument("--no-masks", action="store_true", help="masks are optional (prediction input)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="list slices per patient")
    p.set_defaults(func=cmd_check)

    p = _add(sub, "split", "patient-level k-fold split, stratified by site", """
  gliomaseg split ~/data/kaggle_3m --folds 5 --seed 0 -o splits.json""")
    p.add_argument("data", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_split)

    p = _add(sub, "synth", "write synthetic phantoms in the Kaggle layout", """
  gliomaseg synth demo_data --cases 6 --seed 0""")
    p.add_argument("output", type=Path)
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = _add(sub, "download", "fetch the Kaggle dataset with kagglehub (needs credentials)", """
  gliomaseg download ~/data/lgg""")
    p.add_argument("dest", type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_download)

    p = _add(sub, "train", "train the U-Net; best.pt is the best validation PV-DSC", """
  gliomaseg train ~/data/kaggle_3m -o runs/r1
  gliomaseg train ~/data/kaggle_3m -o runs/f0 --splits splits.json --val-fold 0
  gliomaseg train ~/data/kaggle_3m -o runs/q --set train.max_minutes=15 --set data.context=1
  gliomaseg train --resume runs/r1
  torchrun --nproc_per_node 4 -m gliomaseg.cli train ~/data/kaggle_3m -o runs/ddp""")
    p.add_argument("data", type=Path, nargs="?")
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--splits", type=Path, help="splits.json from 'gliomaseg split'")
    p.add_argument("--val-fold", type=int, default=None)
    p.add_argument("--val-cases", nargs="+", help="validation patient folder names")
    p.add_argument("--no-cache", action="store_true", help="do not use the preprocessing cache")
    p.add_argument("--overwrite", action="store_true")
    _config_args(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED_ERRORS as exc:
        print(f"gliomaseg {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gliomaseg {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
