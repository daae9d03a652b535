"""Command line: parse, call the library, format. One `cmd_<verb>` per verb.

Every expected failure (bad data, bad config, bad checkpoint, refusing to
overwrite) becomes one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .data import DataError

EXIT_BAD_INPUT = 2
# --cv-members without a MODEL: the bundled ensemble
BUNDLED = "bundled"


class UsageError(ValueError):
    """A request the CLI refuses (e.g. overwriting results without --overwrite)."""


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors that become one line and exit 2.

    CheckpointError lives beside torch; importing it here would make every CLI start,
    even a typo'd path, pay seconds for torch. It can only be raised once its module is
    loaded, so it is looked up at failure time.
    """
    checkpoint = sys.modules.get(f"{__package__}.checkpoint")
    return (DataError, ConfigError, UsageError,
            *([checkpoint.CheckpointError] if checkpoint else []))


def _fmt(text: str) -> str:
    return text.strip("\n")


def ensure_output(path: Path, overwrite: bool, inputs: list[Path] = (), *,
                  folder: bool = True) -> Path:
    """Refuse to write into an input folder, or over existing results without --overwrite.

    `folder`: the verb writes a folder at `path` (False: a file). Creates the output's parent
    folder, as `mkdir -p` would, so that a path through a file, a folder where a file goes
    (or the reverse) or a read-only folder fails here in one line, not as a traceback mid-run.
    """
    path = Path(path)
    for src in inputs:
        src = Path(src).resolve()
        if path.resolve() == src or src in path.resolve().parents:
            raise UsageError(f"{path}: output must not be inside the input {src}")
    if path.exists() and (path.is_file() or any(path.iterdir())) and not overwrite:
        raise UsageError(f"{path}: already exists and is not empty; pass --overwrite to replace it")
    if path.exists() and path.is_dir() != folder:
        raise UsageError(f"{path}: is a folder, not a file" if not folder
                         else f"{path}: is a file, not a folder")
    blocker = next(p for p in path.absolute().parents if p.exists())
    if not blocker.is_dir():
        raise UsageError(f"{path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path}: cannot create the folder {path.parent} ({exc.strerror})") from exc
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
              f"tumour pixels: {s['tumour_pixels']}\nsites: {sites}\n"
              f"patients missing a sequence (filled with FLAIR): {len(s['missing_sequences'])}")
        if args.verbose:
            for case, n in s["slices_per_patient"].items():
                missing = s["missing_sequences"].get(case)
                tumour = s["tumour_slices_per_patient"].get(case)
                print(f"  {case}: {n} slices" + (f", {tumour} with tumour" if tumour is not None else "")
                      + (f", no {' or '.join(missing)}" if missing else ""))
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if report.ok:
        print("dataset is usable")
        return 0
    print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
    return 1


# --- split -------------------------------------------------------------------------------------

def cmd_split(args: argparse.Namespace) -> int:
    from .data import list_cases, pair_fold, read_splits, split_folds

    if args.pair_of is None:
        folds = split_folds(list_cases(args.data), args.folds, args.seed)
    else:
        folds = [pair_fold(read_splits(args.pair_of), tuple(args.pair))]
        unknown = sorted(set(folds[0]["train"] + folds[0]["val"]) - set(list_cases(args.data)))
        if unknown:
            raise DataError(f"{args.pair_of}: no patient folder {unknown[0]} in {args.data}")
    ensure_output(args.output, args.overwrite, [args.data], folder=False)
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
    from .train import choose_cases, train

    if args.resume:
        run_dir = args.resume
        saved = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() \
            else None
        if saved is None or not (run_dir / "config.json").is_file():
            raise UsageError(f"{run_dir}: nothing to resume (no run.json/config.json)")
        data, train_cases, val_cases = Path(saved["data"]), saved["train"], saved["val"]
        # The run's own config; a run killed before its first checkpoint restarts with it.
        cfg = load_config(run_dir / "config.json")
    else:
        if args.data is None or args.output is None:
            raise UsageError("train needs DATA and -o RUN_DIR (or --resume RUN_DIR)")
        cfg = load_config(args.config, _overrides(args))
        run_dir, data = ensure_output(args.output, args.overwrite, [args.data]), args.data
        cases = list_cases(data)
        train_cases, val_cases = choose_cases(cases, cfg, args.splits, args.val_fold,
                                              args.val_cases)
        if not train_cases or not val_cases:
            raise UsageError(f"{data}: need at least one training and one validation patient")
    init = args.init
    # An ensemble trains only as a whole fine-tune (--init, and its --resume).
    if cfg.model.members != 1 and init is None and not args.resume:
        raise UsageError("model.members: a run trains one network; train each member as its "
                         "own run and join them with 'gliomaseg bundle RUN... -o model.pt'")
    if init is not None and str(init) == "bundled":
        from .inference import bundled_model_path

        init = bundled_model_path()
    resume = bool(args.resume) and (run_dir / "last.pt").is_file()
    result = train(data, run_dir, cfg, train_cases, val_cases, resume=resume,
                   use_cache=not args.no_cache, init=init)
    print(f"best validation PV-DSC {result['best_dice']:.4f} (epoch {result['best_epoch']}) "
          f"-> {run_dir / 'best.pt'}")
    return 0


# --- tune --------------------------------------------------------------------------------------

def cmd_tune(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import list_cases
    from .train import choose_cases
    from .tune import TuneError, best_config, config_diff, open_storage, tune, with_trial_budget

    if args.trials < 0:
        raise UsageError(f"--trials must be >= 0, got {args.trials}")
    base = with_trial_budget(load_config(args.config, _overrides(args)))
    cases = list_cases(args.data)
    train_cases, val_cases = choose_cases(cases, base, args.splits, args.val_fold, args.val_cases)
    if not train_cases or not val_cases:
        raise UsageError(f"{args.data}: need at least one training and one validation patient")
    out = args.output
    # Re-running the same study into its own output folder resumes it; anything else is refused.
    ensure_output(out, args.overwrite or _tune_folder_of(out, args.study_name), [args.data])
    try:
        storage = open_storage(args.storage) if args.storage else None
        out.mkdir(parents=True, exist_ok=True)
        storage = storage or open_storage(f"sqlite:///{(out / 'study.db').resolve()}")
        print(f"study {args.study_name!r}: {len(train_cases)} training / {len(val_cases)} "
              f"validation patients; {args.trials} more trial(s), each at most "
              f"{base.train.max_minutes:g} min and {base.train.max_epochs} epochs")
        study = tune(args.data, out, base, train_cases, val_cases, storage, args.study_name,
                     args.trials, timeout=args.timeout, seed=args.seed,
                     use_cache=not args.no_cache, overwrite=args.overwrite)
    except TuneError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{out}: cannot write ({exc.strerror or exc})") from None
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    print(f"{sum(states.values())} trial(s) in the study"
          + "".join(f", {n} {s}" for s, n in sorted(states.items())))
    best = best_config(study)
    if best is None:
        print(f"no trial has completed yet; search plot -> {out / 'search.png'}", file=sys.stderr)
        return 1
    t = study.best_trial
    print(f"best validation PV-DSC {t.value:.4f} (trial {t.number}, {t.user_attrs['run_dir']})")
    for key, (old, new) in sorted(config_diff(base, best).items()):
        print(f"  {key}: {old:.4g} -> {new:.4g}" if isinstance(new, float)
              else f"  {key}: {old} -> {new}")
    print(f"-> {out / 'best_config.json'}, {out / 'search.png'}\n"
          f"next: gliomaseg train {args.data} -o RUN_DIR --config {out / 'best_config.json'} "
          "--set train.max_minutes=0")
    return 0


def _tune_folder_of(out: Path, study_name: str) -> bool:
    """Whether `out` holds the results of study `study_name` (its tune.json says so)."""
    try:
        return json.loads((out / "tune.json").read_text()).get("study_name") == study_name
    except (OSError, ValueError, AttributeError):
        return False


# --- serve -------------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .inference import load_model
    from .web import UploadLimits, WebSettings, create_app

    if args.port < 0 or args.port > 65535:
        raise UsageError(f"--port {args.port} is not a TCP port (0-65535)")
    segmenter = load_model(args.model, backend=args.backend)  # fail here, before binding
    settings = WebSettings(limits=UploadLimits(max_bytes=int(args.max_upload_mb * 2**20)),
                           result_ttl=args.ttl_minutes * 60.0, max_concurrent=args.concurrency)
    if not _is_loopback(args.host):
        print(f"warning: serving on {args.host}: anyone who can reach this address can upload "
              "scans; there is no authentication", file=sys.stderr)
    print(f"gliomaseg web app on http://{args.host}:{args.port}/ (research use only; "
          "Ctrl+C stops it)")
    uvicorn.run(create_app(segmenter, settings), host=args.host, port=args.port,
                log_level="warning")
    return 0


# --- predict -----------------------------------------------------------------------------------

def cmd_predict(args: argparse.Namespace) -> int:
    from .evaluate import chosen_post
    from .inference import load_model
    from .nifti import channel_note, is_nifti
    from .predict import plan, run

    if args.spacing is not None and min(args.spacing) <= 0:
        raise UsageError(f"--spacing values must be positive, got {args.spacing}")
    if args.spacing is not None and is_nifti(args.input):
        raise UsageError(f"{args.input}: a NIfTI file carries its own voxel size; drop --spacing")
    jobs, problems = plan(args.input)  # a wrong INPUT fails here, before anything is written
    # A single slice: also refuse its folder, so results never land beside the input.
    ensure_output(args.output, args.overwrite,
                  [args.input if args.input.is_dir() else args.input.parent])
    model = load_model(args.model, backend=args.backend)
    post = chosen_post(model.cfg.post, tta=args.tta, tta_mirror=args.tta_mirror)
    for note in filter(None, (channel_note(j.volume, model.cfg.data) for j in jobs if j.volume)):
        print(f"note: {note}", file=sys.stderr)
    report = run(model, jobs, args.output, post,
                 spacing=tuple(args.spacing) if args.spacing else None)
    report.problems[:0] = problems
    slices = sum(r["slices"] for r in report.rows)
    tumour = sum(1 for r in report.rows if r["tumour_pixels"] > 0)
    print(f"{len(report.rows)} volume(s), {slices} slice(s) ({model.backend}); tumour found in "
          f"{tumour} -> {args.output / 'predictions.csv'}")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if report.problems:
        print(f"{len(report.problems)} problem(s); those files were skipped", file=sys.stderr)
        return 1
    return 0


# --- bundle ------------------------------------------------------------------------------------

def cmd_bundle(args: argparse.Namespace) -> int:
    from .checkpoint import bundle

    sources = [run / "best.pt" if run.is_dir() else run for run in args.runs]
    ensure_output(args.output, args.overwrite, [s.parent for s in sources if s.is_file()],
                  folder=False)
    post = _read_json(args.post) if args.post else None
    out = bundle(sources, args.output, post=post)
    kind = (f"ensemble of {len(sources)}" if len(sources) > 1 else "one network")
    print(f"{kind} -> {args.output} ({args.output.stat().st_size / 1e6:.1f} MB; "
          f"post-processing {out['config']['post']})")
    return 0


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return value


# --- export ------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from .data import iter_patients
    from .export import INT8_MAX_DROP, export_checkpoint, export_int8, int8_path
    from .inference import bundled_model_path, onnx_metadata_path

    if args.int8 != (args.calibrate is not None):
        raise UsageError("--int8 needs --calibrate DATA (patients with masks), and vice versa")
    out = args.output
    targets = [out, onnx_metadata_path(out)]
    if args.int8:
        targets += [int8_path(out), onnx_metadata_path(int8_path(out))]
    for path in targets:
        ensure_output(path, args.overwrite, [args.calibrate] if args.calibrate else [],
                      folder=False)
    checkpoint = args.model or bundled_model_path()
    patients = (list(iter_patients(args.calibrate, require_masks=True, cases=args.cases))
                if args.int8 else [])  # read first: bad calibration data fails before exporting
    meta = export_checkpoint(checkpoint, out)
    print(f"fp32 ONNX -> {out} ({out.stat().st_size / 1e6:.1f} MB), "
          f"metadata -> {onnx_metadata_path(out)}; input {meta['input']['shape']}")
    if not args.int8:
        return 0
    report = export_int8(out, patients, max_drop=INT8_MAX_DROP)
    numbers = (f"mean PV-DSC on {report.patients} calibration patient(s) ({report.slices} "
               f"slices): fp32 {report.fp32_dice:.4f}, int8 {report.int8_dice:.4f}")
    if not report.accepted:
        print(f"int8 refused: {numbers}; the drop exceeds {INT8_MAX_DROP} - kept the fp32 model "
              "only", file=sys.stderr)
        return 1
    print(f"int8 accepted: {numbers} -> {report.path}")
    return 0


# --- evaluate ----------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import chosen_post, cross_validate, evaluate, load_for_evaluation, member_models
    from .nifti import is_nifti
    from .report import write_report

    if args.batch_size < 1 or (args.min_size is not None and args.min_size < 0):
        raise UsageError("--batch-size must be >= 1 and --min-size >= 0")
    cv = bool(args.cv or args.cv_members)
    if args.cv and args.cv_members:
        raise UsageError("--cv and --cv-members are two ways to give the folds; pass one")
    if args.nested_post and not cv:
        raise UsageError("--nested-post chooses each fold's post-processing on the other folds; "
                         "it needs --cv or --cv-members")
    if cv and (args.model or args.cases or args.labels or args.backend == "onnx"):
        raise UsageError("--cv and --cv-members give one network per fold; they replace --model "
                         "and --cases (each fold scores its own validation patients of a "
                         "kaggle_3m DATA) and run with PyTorch")
    inputs = [args.data.parent if is_nifti(args.data) else args.data]
    inputs += [args.labels.parent] if args.labels is not None else []
    out = ensure_output(args.output, args.overwrite, inputs)
    if args.cv_members:
        models = member_models(None if args.cv_members == BUNDLED else Path(args.cv_members),
                               fp32=not args.as_validated)
    else:
        models = [load_for_evaluation(run / "best.pt" if run.is_dir() else run,
                                      fp32=not args.as_validated) for run in args.cv or []]
    model = models[0] if models else load_for_evaluation(args.model, backend=args.backend,
                                                          fp32=not args.as_validated)
    posts = [chosen_post(m.cfg.post, tta=args.tta, tta_mirror=args.tta_mirror,
                         largest_component=args.largest_component,
                         min_size=args.min_size, largest_by=args.largest_by,
                         fill_holes=args.fill_holes)
             for m in models or [model]]
    common = {"variants": not args.no_variants, "batch_size": args.batch_size, "progress": True,
              "settings": {"precision": model.info["precision"],
                           "backend": model.info["backend"]}}
    if models:
        ev = cross_validate(args.data, models, posts, nested=args.nested_post, **common)
    else:
        ev = evaluate(args.data, model.logits_fn, model.cfg, post=posts[0], cases=args.cases,
                      labels=args.labels, **common)
    _print_evaluation(write_report(out, ev, None if models else model), out)
    return 0


def _print_evaluation(s: dict, out: Path) -> None:
    """Per-fold lines, the pooled line, the variants table and the nested choices."""
    a, t = s["aggregate"], s["timing"]
    ci = a["dice_ci95"]
    for f in s["folds"]:
        print(f"fold {f['fold']}: {f['patients']} patients, mean PV-DSC {_num(f['dice_mean'])}, "
              f"median {_num(f['dice_median'])} ({f['model']})")
    print(f"{a['cases']} patients: mean PV-DSC {_num(a['dice_mean'])} "
          f"(95% CI {_num(ci[0])}-{_num(ci[1])}), median {_num(a['dice_median'])}, "
          f"mean IoU {_num(a['iou_mean'])}, median HD95 {_num(a['hd95_median'], 1)} "
          f"{s['units']['hd95']}")
    for row in s["variants"]:
        print(f"  {row['name']:<22} mean {_num(row['dice_mean'])}  median "
              f"{_num(row['dice_median'])}{'  (chosen)' if row['chosen'] else ''}")
    if s["nested_post"]:
        n = s["nested_post"]
        for f in n["folds"]:
            print(f"  nested: fold {f['fold']} chose {f['choice']} (mean {_num(f['inner_mean'])} "
                  f"on the other folds), {_num(f['dice_mean'])} on its own")
        d = n["dice"]
        print(f"nested choice of post-processing: mean PV-DSC {_num(d['mean'])} (95% CI "
              f"{_num(d['ci95'][0])}-{_num(d['ci95'][1])}), median {_num(d['median'])}")
    print(f"{t['seconds']:.1f} s ({t['slices_per_second']} slices/s) -> {out / 'report.html'}")


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# --- compare -----------------------------------------------------------------------------------

def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluate import mean_defined, paired_difference
    from .report import read_case_scores

    names = args.variant or [None]
    if len(names) > 2:
        raise UsageError("--variant takes one name (both evaluations) or two (A's, then B's)")
    a = read_case_scores(args.a, names[0])
    b = read_case_scores(args.b, names[-1])
    result = paired_difference(a, b)
    if result["patients"] == 0:
        raise UsageError(f"{args.a} and {args.b} share no scored patient")
    d = result["difference"]
    print(f"{result['patients']} patients in both (only in A: {len(set(a) - set(b))}, "
          f"only in B: {len(set(b) - set(a))})")
    print(f"mean PV-DSC: A {result['a_mean']:.4f}, B {result['b_mean']:.4f}")
    print(f"B - A: mean {d['mean']:+.4f} (95% CI {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f}), "
          f"median {d['median']:+.4f}; B better on {result['b_better']} patients, "
          f"A on {result['a_better']}")
    for side in ("loss", "gain"):
        case = result[f"largest_{side}"]
        if case is not None:
            print(f"largest {side}: {case} {a[case]:.3f} -> {b[case]:.3f}")
    if args.variant is None:  # the variants table holds PV-DSC only
        for metric in ("precision", "recall"):  # over the paired patients, each side's NaNs out
            m_a, m_b = (mean_defined([read_case_scores(path, metric=metric)[c]
                                      for c in result["cases"]]) for path in (args.a, args.b))
            print(f"mean {metric}: A {_num(m_a)}, B {_num(m_b)}")
    return 0


# --- demo --------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    ensure_output(args.output, args.overwrite)
    s = run_demo(args.output, quick=args.quick)
    a = s["aggregate"]
    print(f"held-out synthetic patients: mean PV-DSC {_num(a['dice_mean'])}, "
          f"median {_num(a['dice_median'])} ({a['cases']} patients)")
    print(f"report: {(args.output / 'report' / 'report.html').resolve()}")
    return 0


# --- parser ------------------------------------------------------------------------------------

BACKEND_HELP = ("auto (default): onnx for an .onnx --model, torch otherwise; onnx: ONNX "
                "Runtime, about 3x faster on CPU with the same masks; without --model the "
                "bundled model is exported once into the cache (about 15 s)")


def _add(sub, name: str, help_: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_,
                          epilog="examples:\n" + _fmt(examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="JSON config (e.g. a tuning result)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--channels", choices=["rgb", "flair"],
                   help="model input: all three channels, or FLAIR only (grayscale); "
                        "short for --set data.channels=...")


def _overrides(args: argparse.Namespace) -> list[str]:
    return args.set + ([f"data.channels={args.channels}"] if args.channels else [])


def _parser_check(sub) -> None:
    p = _add(sub, "check", "check a kaggle_3m dataset and summarise it", """
  gliomaseg check ~/data/kaggle_3m
  gliomaseg check ~/data/kaggle_3m/TCGA_CS_4941_19960909 --verbose
  gliomaseg check scans/ --no-masks --json""")
    p.add_argument("data", type=Path, help="kaggle_3m root or one patient folder")
    p.add_argument("--no-masks", action="store_true", help="masks are optional (prediction input)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="list slices and tumour slices per patient")
    p.set_defaults(func=cmd_check)


def _parser_split(sub) -> None:
    p = _add(sub, "split", "patient-level k-fold split, stratified by site", """
  gliomaseg split ~/data/kaggle_3m --folds 5 --seed 0 -o splits.json
  gliomaseg split ~/data/kaggle_3m --pair-of splits.json --pair 0 1 -o pair0-1.json""")
    p.add_argument("data", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pair-of", type=Path, metavar="SPLITS",
                   help="instead: one fold that trains on every fold of SPLITS but the two "
                        "--pair folds, which it validates on (a network of `make nested`)")
    p.add_argument("--pair", type=int, nargs=2, default=(0, 1), metavar=("J", "K"))
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_split)


def _parser_synth(sub) -> None:
    p = _add(sub, "synth", "write synthetic phantoms in the Kaggle layout", """
  gliomaseg synth demo_data --cases 6 --seed 0""")
    p.add_argument("output", type=Path)
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)


def _parser_download(sub) -> None:
    p = _add(sub, "download", "fetch the Kaggle dataset with kagglehub (needs credentials)", """
  gliomaseg download ~/data/lgg""")
    p.add_argument("dest", type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_download)


def _parser_train(sub) -> None:
    p = _add(sub, "train", "train the U-Net; best.pt is the best validation PV-DSC", """
  gliomaseg train ~/data/kaggle_3m -o runs/r1
  gliomaseg train ~/data/kaggle_3m -o runs/f0 --splits splits.json --val-fold 0
  gliomaseg train ~/data/kaggle_3m -o runs/q --set train.max_minutes=15 --set data.context=1
  gliomaseg train --resume runs/r1
  gliomaseg train ~/data/my_kaggle_3m -o runs/ft --init bundled --set train.max_epochs=5
  torchrun --nproc_per_node 4 -m gliomaseg.cli train ~/data/kaggle_3m -o runs/ddp""")
    p.add_argument("data", type=Path, nargs="?")
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--splits", type=Path, help="splits.json from 'gliomaseg split' (a fold's "
                   "\"train\" list, when given, is used as is)")
    p.add_argument("--val-fold", type=int, default=None)
    p.add_argument("--val-cases", nargs="+", help="validation patient folder names")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT",
                   help="fine-tune: start from these weights ('bundled' for the bundled model)")
    p.add_argument("--no-cache", action="store_true", help="do not use the preprocessing cache")
    p.add_argument("--overwrite", action="store_true")
    _config_args(p)
    p.set_defaults(func=cmd_train)


def _parser_tune(sub) -> None:
    p = _add(sub, "tune", "search hyper-parameters with Optuna (short training runs)", """
  gliomaseg tune ~/data/kaggle_3m -o tuning --trials 20
  gliomaseg tune ~/data/kaggle_3m -o tuning --trials 30 --storage sqlite:///study.db \\
      --splits splits.json --val-fold 0 --set train.max_minutes=5 --set train.max_epochs=8
  gliomaseg tune ~/data/kaggle_3m -o tuning --trials 10 --timeout 3600   # again: resumes
  gliomaseg train ~/data/kaggle_3m -o runs/best --config tuning/best_config.json \\
      --set train.max_minutes=0

what it does:
  Searches learning rate, weight decay, width, dropout, the Dice/BCE mix and augmentation
  strength. Each trial trains in OUT_DIR/trials/NNNN for at most train.max_minutes (10 when
  the config sets none) and train.max_epochs, scored by its best validation PV-DSC on one
  fixed patient-level fold; trials that trail the median are pruned. OUT_DIR gets
  best_config.json (for 'gliomaseg train --config') and search.png, after every trial.
  --trials counts the trials this process adds. The study lives in --storage (default
  OUT_DIR/study.db): run the same command again to resume it.

sharing one study between processes and machines:
  Start the same command (same data, config, --set, fold and --study-name) wherever you like
  with the same --storage URL. A SQLite file serves a few processes on one machine; across
  machines use a database server they all reach, e.g.
  --storage postgresql://user:password@dbhost/gliomaseg (needs a driver such as psycopg2);
  SQLite on a network file system is not safe. Trial folders are numbered per study, so
  machines may share one -o folder or each use their own. Trials of a killed process are
  marked failed after 3 minutes and retried once. Leave --seed unset when sharing, or every
  process draws the same first trials.""")
    p.add_argument("data", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--trials", type=int, default=20, help="trials to add (default 20)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="start no new trial after this long (a running one finishes)")
    p.add_argument("--storage", metavar="URL",
                   help="sqlite:///FILE, postgresql://... or mysql://... "
                        "(default OUT_DIR/study.db)")
    p.add_argument("--study-name", default="gliomaseg", metavar="NAME")
    p.add_argument("--splits", type=Path, help="splits.json from 'gliomaseg split' (a fold's "
                   "\"train\" list, when given, is used as is)")
    p.add_argument("--val-fold", type=int, default=None)
    p.add_argument("--val-cases", nargs="+", help="validation patient folder names")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (unset when sharing)")
    p.add_argument("--no-cache", action="store_true", help="do not use the preprocessing cache")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an OUT_DIR that holds other results")
    _config_args(p)
    p.set_defaults(func=cmd_tune)


def _parser_serve(sub) -> None:
    p = _add(sub, "serve", "web app: upload a scan, view the segmentation, download masks", """
  gliomaseg serve                                  # bundled model, http://127.0.0.1:8000/
  gliomaseg serve --model runs/r1/best.pt --port 8080
  gliomaseg serve --model model.onnx
  curl --data-binary @patient.zip 'http://127.0.0.1:8000/api/uploads?filename=patient.zip'""")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback only: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", type=Path, help="checkpoint (.pt) or .onnx; default: bundled model")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help=BACKEND_HELP)
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload accepted")
    p.add_argument("--ttl-minutes", type=float, default=60.0,
                   help="results and temporary files are deleted after this time")
    p.add_argument("--concurrency", type=int, default=1, help="scans segmented at once")
    p.set_defaults(func=cmd_serve)


def _parser_predict(sub) -> None:
    p = _add(sub, "predict", "segment slices, patient folders or a dataset root", """
  gliomaseg predict ~/scans/TCGA_CS_4941_19960909 -o preds
  gliomaseg predict ~/data/kaggle_3m -o preds --model runs/r1/best.pt --tta
  gliomaseg predict ~/scans/P1/P1_12.tif -o preds --model model.onnx
  gliomaseg predict ~/scans/P1 -o preds --spacing 0.94 0.94 3.5 --overwrite
  gliomaseg predict ~/brats/BraTS2021_00000/BraTS2021_00000_flair.nii.gz -o preds

NIfTI input (.nii/.nii.gz): (X, Y, Z) is FLAIR, (X, Y, Z, 3) is pre-contrast, FLAIR,
post-contrast. Slices are cut axially (the third voxel axis for RAS or LPS data) and the
mask NIfTI has the input's voxel grid, affine and voxel size, so it overlays the input in
ITK-SNAP or 3D Slicer. A model trained on all three channels sees a FLAIR-only volume in
every channel; a FLAIR-only model (--set data.channels=flair) fits such input better.""")
    p.add_argument("input", type=Path,
                   help="a slice (.tif/.png), a patient folder, a dataset root, or a NIfTI "
                        "volume (.nii/.nii.gz)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--model", type=Path, help="checkpoint .pt or exported .onnx (default: bundled)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help=BACKEND_HELP)
    _add_tta(p)
    p.add_argument("--spacing", type=float, nargs=3, metavar=("ROW", "COL", "SLICE"),
                   help="voxel size in mm for the NIfTI and the mm^3 volumes (default: unknown; "
                        "NIfTI inputs use their own)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_predict)


def _add_tta(p) -> None:
    """--tta and --tta-mirror, shared by predict and evaluate; None keeps the model's."""
    p.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="average with the left-right flip (default: the model's setting)")
    p.add_argument("--tta-mirror", choices=["left-right", "both"],
                   help="with TTA: flip left-right (2 passes) or also up-down (4, nnU-Net's 2D "
                        "mirroring) (default: the model's setting)")


def _parser_bundle(sub) -> None:
    p = _add(sub, "bundle", "make one model file from a run, or an ensemble from several runs", """
  gliomaseg bundle runs/r1 -o model.pt
  gliomaseg bundle runs/fold0 runs/fold1 runs/fold2 runs/fold3 runs/fold4 -o ensemble.pt \\
      --post configs/bundled-post.json

Several runs must share their data and model settings; their logits are averaged.
Weights are stored as fp16 (upcast on load); optimiser state is dropped.""")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="training run folder (its best.pt) or checkpoint .pt")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .pt file to write")
    p.add_argument("--post", type=Path, metavar="JSON",
                   help='post-processing settings, e.g. {"tta": true, "min_size": 200}')
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_bundle)


def _parser_export(sub) -> None:
    p = _add(sub, "export", "export a checkpoint to one ONNX file + model.json (optional int8)", """
  gliomaseg export -o model.onnx
  gliomaseg export --model runs/r1/best.pt -o dist/model.onnx
  gliomaseg export --model runs/r1/best.pt -o dist/model.onnx --int8 --calibrate ~/data/kaggle_3m \\
      --cases TCGA_CS_4941_19960909 TCGA_DU_5849_19950405""")
    p.add_argument("--model", type=Path, help="checkpoint .pt (default: the bundled model)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true",
                   help="also write <name>.int8.onnx if its PV-DSC is within 0.005 of fp32")
    p.add_argument("--calibrate", type=Path, metavar="DATA",
                   help="patients with masks for int8 calibration and the PV-DSC check")
    p.add_argument("--cases", nargs="+", help="only these patient folders of DATA")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)


def _parser_evaluate(sub) -> None:
    p = _add(sub, "evaluate", "score a model on labelled patients: summary.json, report.html", """
  gliomaseg evaluate ~/data/kaggle_3m -o eval_bundled
  gliomaseg evaluate ~/data/kaggle_3m -o eval_r1 --model runs/r1/best.pt
  gliomaseg evaluate ~/data/kaggle_3m -o eval_r1 --model runs/r1/best.pt --tta --largest-component
  gliomaseg evaluate ~/data/kaggle_3m -o eval_quick --cases TCGA_CS_4941_19960909 --no-variants
  gliomaseg evaluate ~/data/kaggle_3m -o eval_onnx --model model.onnx
  gliomaseg evaluate ~/data/kaggle_3m -o eval_cv --cv runs/fold0 runs/fold1 runs/fold2
  gliomaseg evaluate ~/data/kaggle_3m -o eval_cv --cv runs/fold0 runs/fold1 --nested-post
  gliomaseg evaluate ~/data/kaggle_3m -o eval_cv --cv-members   # the bundled model's own folds
  gliomaseg evaluate ~/brats/BraTS2021_00000/BraTS2021_00000_flair.nii.gz -o eval_brats
  gliomaseg evaluate ~/scans/p1_flair.nii.gz --labels ~/scans/p1_tumour.nii.gz -o eval_p1

NIfTI input: DATA is one image (.nii/.nii.gz: (X, Y, Z) FLAIR or (X, Y, Z, 3) pre-contrast,
FLAIR, post-contrast) and its labels are a NIfTI on the same voxel grid (same shape and
affine). Any label > 0 counts as tumour, so BraTS labels (1, 2, 4) score the whole tumour,
i.e. the FLAIR abnormality. Without --labels, the file beside DATA named <stem>_mask or
<stem>_seg (.nii.gz or .nii) is used; for BraTS names the modality suffix is dropped first
(BraTS2021_00000_flair.nii.gz -> BraTS2021_00000_seg.nii.gz, ...-t2f.nii.gz -> ...-seg.nii.gz).
HD95 is in mm (from the header's voxel size); volumes are in voxels, as for the Kaggle data.""")
    p.add_argument("data", type=Path,
                   help="kaggle_3m root or one patient folder (with masks), or a NIfTI image")
    p.add_argument("--labels", type=Path, metavar="PATH",
                   help="labels NIfTI of a NIfTI image (default: <stem>_seg/_mask beside it)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR",
                   help="folder for summary.json, per_case.csv and report.html")
    p.add_argument("--model", type=Path, help="checkpoint .pt or exported .onnx (default: bundled)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help=BACKEND_HELP)
    p.add_argument("--cases", nargs="+", help="only these patient folders of DATA")
    p.add_argument("--cv", nargs="+", type=Path, metavar="RUN",
                   help="cross-validation: one training run folder (or its best.pt) per fold; "
                        "each scores the validation patients in its run.json, and the report "
                        "pools them with a per-fold table. A bundle scores the validation "
                        "patients none of its networks trained on")
    p.add_argument("--cv-members", nargs="?", const=BUNDLED, metavar="MODEL",
                   help="cross-validation of an ensemble file (no MODEL: the bundled model): "
                        "each of its networks scores the validation patients its training run "
                        "recorded, as with --cv on the runs it was bundled from")
    _add_tta(p)
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction,
                   help="keep only the largest 3D connected component per patient "
                        "(default: the model's setting)")
    p.add_argument("--largest-by", choices=["probability", "voxels"],
                   help="what 'largest' means: summed probability or voxel count "
                        "(default: the model's setting)")
    p.add_argument("--min-size", type=int, metavar="VOXELS",
                   help="drop 3D components smaller than this (default: the model's setting)")
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction,
                   help="fill holes enclosed in 3D in the final mask (default: the model's "
                        "setting)")
    p.add_argument("--no-variants", action="store_true",
                   help="skip the post-processing/TTA variants table (one network pass less)")
    p.add_argument("--nested-post", action="store_true",
                   help="with --cv: choose each fold's post-processing (threshold, TTA, "
                        "component rule, min size: 48 candidates) on the other folds' patients "
                        "and report the pooled scores, an estimate free of choosing on the "
                        "patients it scores")
    p.add_argument("--as-validated", action="store_true",
                   help="run a PyTorch model as training validated it (bf16/channels-last: "
                        "about 3x faster, same PV-DSC as the training log) instead of in fp32 "
                        "exactly as 'predict' does")
    p.add_argument("--batch-size", type=int, default=16, help="slices per network call")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _parser_compare(sub) -> None:
    p = _add(sub, "compare", "paired PV-DSC difference of two evaluations of the same patients", """
  gliomaseg compare eval_r1 eval_r2
  gliomaseg compare eval_r1 eval_r1 --variant plain +TTA   # two variants of one evaluation""")
    p.add_argument("a", type=Path, metavar="EVAL_A", help="evaluation folder (or its summary.json)")
    p.add_argument("b", type=Path, metavar="EVAL_B")
    p.add_argument("--variant", nargs="+", metavar="NAME",
                   help="use a variant of the variants table: one name for both, or A's and B's")
    p.set_defaults(func=cmd_compare)


def _parser_demo(sub) -> None:
    p = _add(sub, "demo", "synthetic data -> train a small model -> evaluation report", """
  gliomaseg demo demo --overwrite     # what 'make demo' runs (about 2 minutes on 2 cores)
  open demo/report/report.html""")
    p.add_argument("output", type=Path, metavar="OUT",
                   help="folder for data/, run/ and report/")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for tests: seconds, and a model that has barely learned")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_demo)


# One function per verb, in the order `gliomaseg --help` lists them.
VERBS = (
    _parser_check, _parser_split, _parser_synth, _parser_download, _parser_train, _parser_tune,
    _parser_serve, _parser_predict, _parser_bundle, _parser_export, _parser_evaluate,
    _parser_compare, _parser_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliomaseg",
        description="Segment lower-grade glioma (FLAIR abnormality) in brain MRI slices "
                    "with a U-Net on a CPU. Data: the Kaggle LGG MRI Segmentation layout.",
        epilog="Run 'gliomaseg VERB --help' for examples of each verb.")
    parser.add_argument("--version", action="version", version=f"gliomaseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add_verb in VERBS:
        add_verb(sub)
    return parser


def check_input_paths(args: argparse.Namespace) -> None:
    """A missing DATA/INPUT/--labels fails at once, before the verb spends seconds importing
    torch, and before an output beside it is refused for being inside that input's folder."""
    for name in ("data", "input", "labels"):
        path = getattr(args, name, None)
        if isinstance(path, Path) and not path.exists():
            raise DataError(f"{path}: no such file or directory")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_input_paths(args)
        return args.func(args)
    except expected_errors() as exc:
        print(f"gliomaseg {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gliomaseg {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
