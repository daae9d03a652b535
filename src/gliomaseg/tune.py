"""Hyper-parameter search with Optuna: short training runs scored by validation PV-DSC.

Each trial draws a config with `suggest`, trains it with `train.train` in its own run
folder (OUT_DIR/trials/NNNN) under the base config's budget, and returns the best
validation PV-DSC on one fixed patient-level fold. Epoch scores go to the trial, so
Optuna's median pruner stops trials that trail the others. The study lives in an SQL
database (the storage URL), so a search resumes where it stopped and several processes,
on several machines with a database server, work on the same study.

OUT_DIR gets best_config.json (a full Config dict for `gliomaseg train --config`),
search.png (objective by trial and parameter importances) and tune.json (which study).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import optuna

from .config import AugmentConfig, Config, validate
from .train import train

if "ipykernel" not in sys.modules:  # files only; but keep Jupyter's inline figures working
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

WIDTHS = (0.5, 1.0, 1.5, 2.0)  # multiples of the base config's model.base_filters
DEFAULT_TRIAL_MINUTES = 10.0  # per-trial budget when the base config sets none
SQL_DIALECTS = ("sqlite", "postgresql", "mysql")

# Caps keep a strong augmentation meaningful: a flip with p > 0.5 adds no variety (p = 1 is
# just a mirrored data set), rotate90 is uniform over the 4 turns at p = 0.75, and zoom
# needs 1 - scale_range > 0. A base value above its cap is kept (strength 1 is identity).
# gamma_range, blur_sigma and low_resolution_zoom are not scaled: their identities are a
# gamma of 1, a sigma of 0 and a zoom of 1, not a range of 0; their probabilities are.
AUGMENT_CAPS = {"flip": 0.5, "rotate90": 0.75, "rotate": 1.0, "rotate_degrees": 180.0,
                "scale": 1.0, "scale_range": 0.5, "intensity": 1.0, "intensity_range": 1.0,
                "gamma": 1.0, "noise": 1.0, "noise_std": 1.0, "blur": 1.0, "low_resolution": 1.0,
                "missing_sequence": 0.5}

SEARCHED_KEYS = frozenset(
    {"train.lr", "train.weight_decay", "train.dice_weight", "train.bce_weight",
     "model.base_filters", "model.dropout"}
    | {f"augment.{k}" for k in AUGMENT_CAPS})

# Settings that change speed, not results, and may differ between machines sharing a study.
MACHINE_KEYS = frozenset({"train.num_threads", "train.workers"})


class TuneError(ValueError):
    """A storage, study or output folder the search cannot use."""


# --- search space ------------------------------------------------------------------------------

def scale_augment(aug: AugmentConfig, strength: float) -> dict[str, float]:
    """Every augmentation probability and range in AUGMENT_CAPS times `strength` (0 = none,
    1 = as given)."""
    values = dataclasses.asdict(aug)
    return {k: min(max(cap, values[k]), values[k] * strength) for k, cap in AUGMENT_CAPS.items()}


def suggest(trial: optuna.trial.BaseTrial, base: Config) -> Config:
    """The search space: `base` with learning rate, weight decay, width, dropout, loss mix and
    augmentation strength drawn from `trial`. Everything else, budget included, stays as in base.

    The loss weights keep their base sum: Adam is almost blind to the overall scale of the
    loss, so only the Dice/BCE mix is worth searching.
    """
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    weight_decay = trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True)
    width = trial.suggest_categorical("width", WIDTHS)
    dropout = trial.suggest_float("dropout", 0.0, 0.3)
    dice_share = trial.suggest_float("dice_share", 0.2, 0.8)
    strength = trial.suggest_float("augment_strength", 0.0, 2.0)
    total = base.train.dice_weight + base.train.bce_weight
    return validate(base.replace(
        # rounded so that trial 0 reproduces the base weights exactly, not to the last bit
        train={"lr": lr, "weight_decay": weight_decay, "dice_weight": round(total * dice_share, 6),
               "bce_weight": round(total * (1 - dice_share), 6)},
        model={"base_filters": max(2, round(base.model.base_filters * width)),
               "dropout": dropout},
        augment=scale_augment(base.augment, strength)))


def base_params(base: Config) -> dict[str, float]:
    """The search-space point that reproduces `base` itself (see `suggest`)."""
    total = base.train.dice_weight + base.train.bce_weight
    return {"lr": base.train.lr, "weight_decay": base.train.weight_decay, "width": 1.0,
            "dropout": base.model.dropout,
            "dice_share": base.train.dice_weight / total if total else 0.5,
            "augment_strength": 1.0}


def with_trial_budget(cfg: Config, minutes: float = DEFAULT_TRIAL_MINUTES) -> Config:
    """Give each trial a wall-clock budget when the config has none (0 means unlimited)."""
    return cfg if cfg.train.max_minutes > 0 else cfg.replace(train={"max_minutes": minutes})


def config_diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """{"section.key": (value in a, value in b)} for every setting that differs."""
    da, db = a.to_dict(), b.to_dict()
    return {f"{s}.{k}": (da[s][k], db[s][k])
            for s in da for k in da[s] if da[s][k] != db[s][k]}


# --- storage and study -------------------------------------------------------------------------

def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for a sqlite/postgresql/mysql URL, or TuneError in one line.

    A heartbeat marks trials of a killed process as failed (instead of running forever)
    and retries each once, so a stopped search resumes cleanly.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise TuneError(f"--storage {url!r}: not a database URL "
                        "(e.g. sqlite:///study.db or postgresql://host/db)") from None
    if parsed.get_backend_name() not in SQL_DIALECTS:
        raise TuneError(f"--storage {_safe(url)!r}: unknown scheme {parsed.drivername!r}; "
                        f"use one of {', '.join(SQL_DIALECTS)}")
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(url, parsed.database)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                              heartbeat_stale_trial_callback=retry)
    except (ImportError, SQLAlchemyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"--storage {_safe(url)}: cannot open ({reason})") from None


def _check_sqlite_path(url: str, database: str | None) -> None:
    if not database or database == ":memory:":
        raise TuneError(f"--storage {url!r}: needs a file (sqlite:///study.db) to be resumable")
    path = Path(database)
    if path.is_dir():
        raise TuneError(f"--storage {url!r}: {path} is a folder, not a database file")
    if not path.parent.is_dir():
        raise TuneError(f"--storage {url!r}: folder {path.parent} does not exist")
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise TuneError(f"--storage {url!r}: {target} is not writable")


def _safe(url: str) -> str:
    """The URL without its password, for messages and tune.json."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _comparable(cfg: Config) -> str:
    raw = cfg.to_dict()
    for key in MACHINE_KEYS:
        section, name = key.split(".")
        raw[section].pop(name)
    return json.dumps(raw, sort_keys=True)


def open_study(storage: optuna.storages.BaseStorage, name: str, base: Config,
               val_cases: list[str], seed: int | None = None) -> optuna.Study:
    """Create the study or load it, refusing one started with another base config or fold.

    Trials of one study must be scored the same way, or their PV-DSCs do not compare.
    `seed` fixes the sampler; leave it None when several processes share a study, or they
    would all draw the same first trials.
    """
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        # Wait for 4 finished trials and never judge the first epoch: early epochs are noisy.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2))
    attrs = study.user_attrs
    if "base_config" not in attrs:
        study.set_user_attr("base_config", json.loads(_comparable(base)))
        study.set_user_attr("val_cases", sorted(val_cases))
        # Trial 0 trains the base config itself, so the search shows whether it beat it.
        study.enqueue_trial(base_params(base))
        return study
    if attrs["base_config"] != json.loads(_comparable(base)):
        started = Config.from_dict(attrs["base_config"])  # missing machine keys: defaults
        keys = ", ".join(sorted(set(config_diff(started, base)) - MACHINE_KEYS)) or "?"
        raise TuneError(f"study {name!r} was started with another base config ({keys}); "
                        "use the same settings or another --study-name")
    if attrs.get("val_cases") != sorted(val_cases):
        raise TuneError(f"study {name!r} was started with other validation patients; "
                        "use the same --splits/--val-fold or another --study-name")
    return study


# --- objective ---------------------------------------------------------------------------------

def make_objective(data: Path, out_dir: Path, base: Config, train_cases: list[str],
                   val_cases: list[str], use_cache: bool = True,
                   overwrite: bool = False) -> Callable[[optuna.Trial], float]:
    """objective(trial) -> best validation PV-DSC of a training run in OUT_DIR/trials/NNNN."""

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest(trial, base)
        run_dir = Path(out_dir) / "trials" / f"{trial.number:04d}"
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise TuneError(f"{run_dir}: already holds a run (a study restarted in the same "
                            "output folder?); pass --overwrite or use another -o")
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("run_dir", str(run_dir))
        result = train(data, run_dir, cfg, train_cases, val_cases, use_cache=use_cache,
                       trial=trial)
        trial.set_user_attr("best_epoch", result["best_epoch"])
        if result["pruned"]:
            raise optuna.TrialPruned()
        return result["best_dice"]

    return objective


def tune(data: Path, out_dir: Path, base: Config, train_cases: list[str], val_cases: list[str],
         storage: optuna.storages.BaseStorage, study_name: str, n_trials: int,
         timeout: float | None = None, seed: int | None = None, use_cache: bool = True,
         overwrite: bool = False) -> optuna.Study:
    """Run `n_trials` more trials (fewer if `timeout` seconds pass) and write the results.

    Results are rewritten after every trial, so they are current even if the process is
    killed, and include trials run by other processes on the same study.
    """
    study = open_study(storage, study_name, base, val_cases, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "tune.json", json.dumps(
        {"study_name": study_name, "storage": _storage_url(storage), "data": str(data),
         "val_cases": sorted(val_cases)}, indent=2))
    objective = make_objective(data, out_dir, base, train_cases, val_cases, use_cache, overwrite)
    try:
        study.optimize(objective, n_trials=n_trials, timeout=timeout,
                       callbacks=[lambda s, _t: write_results(s, out_dir)])
    finally:
        write_results(study, out_dir)  # an interrupted search still leaves its best so far
    return study


def _storage_url(storage: optuna.storages.BaseStorage) -> str | None:
    url = getattr(storage, "url", None)
    return _safe(url) if url else None


# --- results -----------------------------------------------------------------------------------

def best_config(study: optuna.Study) -> Config | None:
    """The exact config the best complete trial trained, or None before any trial completes."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    return Config.from_dict(study.best_trial.user_attrs["config"])


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (sum 1); {} with fewer than 2 complete trials."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # e.g. every parameter constant over the trials
        return {}


def trial_points(study: optuna.Study) -> list[tuple[int, str, float]]:
    """(number, state, score) per finished trial; a pruned trial scores its last epoch."""
    points = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            points.append((t.number, "complete", float(t.value)))
        elif t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            points.append((t.number, "pruned", float(t.intermediate_values[t.last_step])))
    return points


def plot_search(points: list[tuple[int, str, float]], importances: dict[str, float],
                path: Path) -> None:
    """Left: validation PV-DSC by trial (pruned trials grey) and the best so far.
    Right: parameter importances, or a note when they cannot be computed yet."""
    fig, (ax_obj, ax_imp) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    done = [(n, v) for n, s, v in points if s == "complete" and not math.isnan(v)]
    pruned = [(n, v) for n, s, v in points if s == "pruned"]
    if done:
        ax_obj.plot(*zip(*done, strict=True), "o", color="tab:blue", label="complete")
        best, run = [], -math.inf
        for _, v in done:
            run = max(run, v)
            best.append(run)
        ax_obj.step([n for n, _ in done], best, where="post", color="tab:orange",
                    label="best so far")
    if pruned:
        ax_obj.plot(*zip(*pruned, strict=True), "x", color="grey", label="pruned (last epoch)")
    ax_obj.set(xlabel="trial", ylabel="validation PV-DSC", title="Search", ylim=(-0.03, 1.03))
    ax_obj.xaxis.set_major_locator(MaxNLocator(integer=True))
    if done or pruned:
        ax_obj.legend(loc="lower right", fontsize=8)
    if importances:
        names = list(importances)[::-1]
        ax_imp.barh(names, [importances[n] for n in names], color="tab:green")
        ax_imp.set(xlabel="importance (sums to 1)",
                   title=f"Parameter importances ({len(done)} complete trials)")
    else:
        ax_imp.axis("off")
        ax_imp.text(0.5, 0.5, "importances need at least\n2 complete trials",
                    ha="center", va="center")
    fig.tight_layout()
    tmp = _tmp_path(Path(path))
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def write_results(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """OUT_DIR/search.png always; OUT_DIR/best_config.json once a trial has completed."""
    out_dir = Path(out_dir)
    written = {"plot": out_dir / "search.png"}
    plot_search(trial_points(study), param_importances(study), written["plot"])
    cfg = best_config(study)
    if cfg is not None:
        written["config"] = out_dir / "best_config.json"
        _write_atomic(written["config"], json.dumps(cfg.to_dict(), indent=2))
    return written


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file: processes sharing OUT_DIR never see half a file."""
    tmp = _tmp_path(path)
    tmp.write_text(text)
    tmp.replace(path)


def _tmp_path(path: Path) -> Path:
    """A temporary name of this process beside `path` (processes may share OUT_DIR)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
