"""Hyper-parameter search: the search space, pruning, storage errors and a real 2-trial study."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import optuna
import pytest
from conftest import TINY

from gliomaseg.cli import main
from gliomaseg.config import Config, load_config, validate
from gliomaseg.data import list_cases
from gliomaseg.tune import (
    AUGMENT_CAPS,
    SEARCHED_KEYS,
    WIDTHS,
    TuneError,
    config_diff,
    make_objective,
    open_storage,
    open_study,
    plot_search,
    suggest,
    with_trial_budget,
)

PARAMS = {"lr": 2e-3, "weight_decay": 1e-4, "width": 2.0, "dropout": 0.25, "dice_share": 0.75,
          "augment_strength": 1.0}
# Tiny trials: epochs of 4 steps on the 64-pixel grid take about a second each.
BASE = TINY.replace(train={"max_epochs": 1, "steps_per_epoch": 4})


def test_suggest_applies_fixed_params_to_searched_keys_only():
    cfg = suggest(optuna.trial.FixedTrial(PARAMS), BASE)
    assert cfg.train.lr == 2e-3 and cfg.train.weight_decay == 1e-4
    assert cfg.model.base_filters == 2 * BASE.model.base_filters
    assert cfg.model.dropout == 0.25
    # The Dice/BCE mix changes, their sum (the loss scale) does not.
    assert cfg.train.dice_weight == pytest.approx(1.5)
    assert cfg.train.bce_weight == pytest.approx(0.5)
    changed = set(config_diff(BASE, cfg))
    assert changed <= SEARCHED_KEYS
    assert {"train.lr", "model.base_filters", "train.dice_weight"} <= changed


def test_augment_strength_scales_every_augmentation_within_caps():
    def aug(strength):
        return suggest(optuna.trial.FixedTrial({**PARAMS, "augment_strength": strength}), BASE)

    assert aug(1.0).augment == BASE.augment  # strength 1 is the base augmentation
    off = dataclasses.asdict(aug(0.0).augment)
    for key in ("gamma_range", "blur_sigma", "low_resolution_zoom"):  # identities are not 0
        assert off.pop(key) == getattr(BASE.augment, key)
    assert set(off) == set(AUGMENT_CAPS) and all(v == 0 for v in off.values())
    strong, base = aug(2.0).augment, BASE.augment
    assert strong.rotate == 2 * base.rotate and strong.scale_range == 2 * base.scale_range
    frequent = BASE.replace(augment={"flip": 0.4})
    strong = suggest(optuna.trial.FixedTrial({**PARAMS, "augment_strength": 2.0}), frequent)
    assert strong.augment.flip == 0.5  # a flip more often than half the time adds no variety
    contrast = BASE.replace(augment={"gamma": 0.3})
    strong = suggest(optuna.trial.FixedTrial({**PARAMS, "augment_strength": 2.0}), contrast)
    assert strong.augment.gamma == pytest.approx(0.6)


def test_sampled_configs_are_valid_and_in_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(30):
        cfg = suggest(study.ask(), Config())
        validate(cfg)
        assert 1e-4 <= cfg.train.lr <= 1e-2 and 0 <= cfg.model.dropout <= 0.3
        assert cfg.model.base_filters in {round(Config().model.base_filters * w) for w in WIDTHS}
        assert cfg.train.dice_weight + cfg.train.bce_weight == pytest.approx(2.0)
        assert 0 <= cfg.augment.scale_range <= AUGMENT_CAPS["scale_range"]


def test_with_trial_budget_only_fills_a_missing_budget():
    assert with_trial_budget(Config(), 7.0).train.max_minutes == 7.0
    timed = Config().replace(train={"max_minutes": 3.0})
    assert with_trial_budget(timed, 7.0) == timed


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_trial_stops_training_and_is_recorded_as_pruned(synth_root, tmp_path):
    cases = list_cases(synth_root)
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    base = BASE.replace(train={"max_epochs": 2, "steps_per_epoch": 2})
    objective = make_objective(synth_root, tmp_path, base, cases[:3], cases[3:])
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # reported epoch 1, then stopped
    rows = (tmp_path / "trials" / "0000" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header and epoch 1 only, out of max_epochs=2


def test_study_refuses_another_base_config_or_fold(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    open_study(storage, "s", BASE, ["A"])
    open_study(storage, "s", BASE.replace(train={"num_threads": 1}), ["A"])  # speed only: fine
    with pytest.raises(TuneError, match="train.lr"):
        open_study(storage, "s", BASE.replace(train={"lr": 0.1}), ["A"])
    with pytest.raises(TuneError, match="validation patients"):
        open_study(storage, "s", BASE, ["B"])


def test_plot_search_draws_pruned_only_and_full_searches(tmp_path):
    plot_search([(0, "pruned", 0.2)], {}, tmp_path / "a.png")
    plot_search([(0, "complete", 0.5), (1, "pruned", 0.1), (2, "complete", 0.7)],
                {"lr": 0.7, "width": 0.3}, tmp_path / "b.png")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tune_args(synth_root, tmp_path, out, trials):
    config = tmp_path / "base.json"
    config.write_text(json.dumps(BASE.to_dict()))
    val = list_cases(synth_root)[-1]
    return ["tune", str(synth_root), "-o", str(out), "--trials", str(trials), "--storage",
            f"sqlite:///{tmp_path / 'study.db'}", "--study-name", "t", "--config", str(config),
            "--val-cases", val, "--seed", "0"]


def test_tune_two_trials_writes_best_config_and_plot_then_resumes(synth_root, tmp_path, capsys):
    out = tmp_path / "tuning"
    assert main(_tune_args(synth_root, tmp_path, out, 2)) == 0
    with sqlite3.connect(tmp_path / "study.db") as db:
        assert db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 2
    assert "2 trial(s) in the study, 2 complete" in capsys.readouterr().out

    best = load_config(out / "best_config.json")  # what `gliomaseg train --config` reads
    base = with_trial_budget(BASE)
    assert set(config_diff(base, best)) <= SEARCHED_KEYS
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}")
    first, second = (Config.from_dict(t.user_attrs["config"]) for t in study.trials[:2])
    assert config_diff(base, first) == {}  # trial 0 trains the base config itself
    assert config_diff(base, second)  # later trials search
    assert study.best_value == max(t.value for t in study.trials)
    best_run = Path(study.best_trial.user_attrs["run_dir"])
    assert best_run.parent == out / "trials"
    assert json.loads((best_run / "config.json").read_text()) \
        == json.loads((out / "best_config.json").read_text())  # the config the best run used
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(_tune_args(synth_root, tmp_path, out, 1)) == 0  # same command resumes
    with sqlite3.connect(tmp_path / "study.db") as db:
        assert db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 3
    assert (out / "trials" / "0002" / "metrics.csv").is_file()


@pytest.mark.parametrize("storage, message", [
    ("redis://localhost/0", "unknown scheme"),
    ("sqlite:///{tmp}/file.txt/study.db", "does not exist"),
    ("sqlite:///{tmp}", "is a folder"),
    ("sqlite://", "needs a file"),
    ("sqlite:///{tmp}/file.txt", "cannot open"),
    ("not a url", "not a database URL"),
])
def test_bad_storage_is_one_line_and_exit_2(synth_root, tmp_path, capsys, storage, message):
    (tmp_path / "file.txt").write_text("not a database\n")
    out = tmp_path / "tuning"
    args = _tune_args(synth_root, tmp_path, out, 1)
    args[args.index("--storage") + 1] = storage.format(tmp=tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written for a search that cannot start


def test_refuses_an_output_folder_of_something_else(synth_root, tmp_path, capsys):
    out = tmp_path / "tuning"
    out.mkdir()
    (out / "results.csv").write_text("x\n")
    assert main(_tune_args(synth_root, tmp_path, out, 1)) == 2
    assert "--overwrite" in capsys.readouterr().err
