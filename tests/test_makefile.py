"""The Makefile recipes behind the model card (`model`, `seeds`, `restart`, `seedpairs`, `variant`,
`ensemble`, `nested`), dry-run.

`make -n` prints the commands without running them, so these tests check the wiring that
the card's numbers depend on: which checkpoint each run starts from, which runs each
cross-validation pools, and that no trained network is deleted as an intermediate file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(tmp_path: Path, *targets: str) -> list[str]:
    """The commands `make -n TARGETS` would run, one per line (continuations joined)."""
    out = subprocess.run(["make", "-n", "-C", str(ROOT), *targets, "DATA=data", f"RUN={tmp_path}/r"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.replace("\\\n", " ").splitlines() if line.strip()]


def test_model_trains_every_fold_then_cross_validates_and_bundles_them(tmp_path):
    lines = dry_run(tmp_path, "model")
    run = f"{tmp_path}/r"
    trains = [line for line in lines if " train data " in line]
    assert [re.search(r"--val-fold (\d)", t).group(1) for t in trains] == list("01234")
    assert all(f"-o {run}-fold{k} " in t for k, t in zip(range(5), trains, strict=True))
    cv = next(line for line in lines if " evaluate data --cv " in line)
    assert all(f"{run}-fold{k}" in cv for k in range(5))
    assert any(" bundle " in line and "weights/model.pt" in line for line in lines)


def test_every_cross_validation_reports_the_nested_choice_of_post_processing(tmp_path):
    lines = dry_run(tmp_path, "model", "restart", "seedpairs")
    evaluations = [line for line in lines if " evaluate data --cv " in line]
    assert len(evaluations) == 5  # model, restart, its pairs, seed 1, seed pairs
    assert all(" --nested-post " in line for line in evaluations), evaluations


def test_restart_starts_each_fold_from_its_own_network_and_pairs_them(tmp_path):
    lines = dry_run(tmp_path, "restart")
    run = f"{tmp_path}/r"
    for k in range(5):
        restart = next(line for line in lines if f"-o {run}-restart{k} " in line)
        assert f"--val-fold {k} " in restart and f"--init {run}-fold{k}/best.pt" in restart
        pair = next(line for line in lines if f"-o {run}-pair{k}.pt" in line)
        assert f"bundle {run}-fold{k} {run}-restart{k} " in pair
    evaluations = [line for line in lines if " evaluate data --cv " in line]
    assert any(f"{run}-restart4 " in e and f"-o {run}-restart-cv" in e for e in evaluations)
    assert any(f"{run}-pair4.pt " in e and f"-o {run}-pairs-cv" in e for e in evaluations)


def test_seedpairs_pairs_each_fold_with_its_own_seed_1_network(tmp_path):
    lines = dry_run(tmp_path, "seedpairs")
    run = f"{tmp_path}/r"
    for k in range(1, 5):
        train = next(line for line in lines if f"-o {run}-seed1-fold{k} " in line)
        assert f"--val-fold {k} " in train and "--set train.seed=1 " in train
    # Fold 0's seed-1 network is the one `make seeds` trains; it is not trained twice.
    assert not any(f"-o {run}-seed1-fold0 " in line for line in lines)
    seed1 = {0: f"{run}-seed1/"} | {k: f"{run}-seed1-fold{k}/" for k in range(1, 5)}
    for k, second in seed1.items():
        pair = next(line for line in lines if f"-o {run}-seedpair{k}.pt" in line)
        assert f"bundle {run}-fold{k}/ {second} " in pair
    cv = next(line for line in lines if f"-o {run}-seedpairs-cv" in line)
    assert all(f"{run}-seedpair{k}.pt" in cv for k in range(5))
    seed1_cv = next(line for line in lines if f"-o {run}-seed1-cv " in line)
    assert all(f" {second} " in seed1_cv for second in seed1.values())


def test_wide_trains_each_fold_from_scratch_and_compares_with_the_bundled_networks(tmp_path):
    name, change = "wide", "--set model.base_filters=16"
    lines = dry_run(tmp_path, "wide")
    run = f"{tmp_path}/r"
    for k in range(5):
        train = next(line for line in lines if f"-o {run}-{name}{k} " in line)
        assert f"--val-fold {k} " in train and f"--config configs/bundled.json {change} " in train
        assert "--init" not in train and "--resume" not in train
    cv = next(line for line in lines if f"-o {run}-{name}-cv " in line)
    assert all(f" {run}-{name}{k}/ " in cv for k in range(5)) and " --nested-post " in cv
    baseline = next(line for line in lines if f"-o {run}-members-cv " in line)
    assert " --cv-members " in baseline and " --nested-post " in baseline
    assert not [line for line in lines if f"-o {run}-fold" in line]  # no baseline retraining
    compares = [line for line in lines if " compare " in line]
    assert len(compares) == 2
    assert all(f"compare {run}-members-cv {run}-{name}-cv" in line for line in compares)
    assert any('--variant "nested choice"' in line for line in compares)


def test_a_variant_can_run_on_some_folds(tmp_path):
    lines = dry_run(tmp_path, "variant", "NAME=try", "SET=--set train.lr=0.001", "FOLDS=0 3")
    trains = [line for line in lines if " train data " in line]
    assert [re.search(r"--val-fold (\d)", t).group(1) for t in trains] == ["0", "3"]
    assert all("--set train.lr=0.001 --overwrite" in t for t in trains)
    cv = next(line for line in lines if f"-o {tmp_path}/r-try-cv " in line)
    assert f"{tmp_path}/r-try0/ {tmp_path}/r-try3/ " in cv


@pytest.mark.parametrize(("ckpt", "suffix"), [("best.pt", ""), ("last.pt", "-last")])
def test_ensemble_joins_each_fold_with_its_own_variant_networks(tmp_path, ckpt, suffix):
    run = f"{tmp_path}/r"
    for name in ("fg80", "dice80"):  # `make variant` has trained these
        for k in range(5):
            (tmp_path / f"r-{name}{k}").mkdir()
            (tmp_path / f"r-{name}{k}" / "best.pt").touch()
    lines = dry_run(tmp_path, "ensemble", "NAMES=fg80 dice80", f"CKPT={ckpt}")
    ens = f"{run}-ens-fg80-dice80{suffix}"
    for k in range(5):
        joined = next(line for line in lines if f"-o {ens}-fold{k}.pt" in line)
        assert f"bundle {run}-fold{k}/{ckpt} {run}-fg80{k}/{ckpt} {run}-dice80{k}/{ckpt} " in joined
    assert not [line for line in lines if " train " in line and "-fold" not in line]
    cv = next(line for line in lines if f"-o {ens}-cv " in line)
    assert all(f"{ens}-fold{k}.pt" in cv for k in range(5)) and " --nested-post " in cv
    compares = [line for line in lines if " compare " in line]
    assert all(f"compare {run}-members-cv {ens}-cv" in line for line in compares)
    assert len(compares) == 2 and any('--variant "nested choice"' in line for line in compares)


def test_nested_trains_each_pair_of_folds_once_and_scores_the_outer_folds(tmp_path):
    run, kept = f"{tmp_path}/r", f"{tmp_path}/kept"
    lines = dry_run(tmp_path, "nested", "OUTERS=1 3", f"KEPT={kept}")
    pairs = ["0-1", "1-2", "1-3", "1-4", "0-3", "2-3", "3-4"]  # 1-3 serves both outer folds
    splits = [line for line in lines if " --pair-of " in line]
    assert [re.search(r"--pair (\d \d)", s).group(1) for s in splits] == [
        p.replace("-", " ") for p in pairs]
    trains = [" ".join(line.split()) for line in lines if " train " in line]
    assert len(trains) == len(pairs)
    for p, t in zip(pairs, trains, strict=True):
        assert f"train --resume {run}-pair{p};" in t  # a killed run resumes
        assert f"-o {run}-pair{p} --splits {run}-pair{p}-splits.json " in t
        assert "--config configs/bundled.json --overwrite" in t and "--val-fold" not in t
    for p in pairs:  # each finished network is kept, slim, with its training log
        assert any(line.endswith(f"bundle {run}-pair{p}/last.pt -o {kept}/pair{p}.pt --overwrite")
                   for line in lines)
        assert f"cp {run}-pair{p}/metrics.csv {kept}/pair{p}-metrics.csv" in lines
    for k, members in ((1, pairs[:4]), (3, ["0-3", "1-3", "2-3", "3-4"])):
        joined = next(line for line in lines if f"-o {run}-outer{k}.pt " in line)
        assert f"bundle {' '.join(f'{kept}/pair{p}.pt' for p in members)} " in joined
    scored = next(line for line in lines if f"-o {run}-nested-1-3-cv " in line)
    assert f"--cv {run}-outer1.pt {run}-outer3.pt " in scored and " --nested-post " in scored
    compares = [line for line in lines if " compare " in line]
    assert compares and all(f"compare {run}-members-cv {run}-nested-1-3-cv" in c for c in compares)
    one = next(line for line in dry_run(tmp_path, "nested", "OUTERS=0", f"KEPT={kept}")
               if "-nested-0-cv " in line)
    assert "--nested-post" not in one  # one fold has no other folds to choose on


def test_nested_does_not_retrain_a_kept_network(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    for p in ("0-1", "1-2"):  # kept by an earlier session; its run folder is gone
        (kept / f"pair{p}.pt").touch()
    lines = dry_run(tmp_path, "nested", "OUTERS=1", f"KEPT={kept}")
    trained = [re.search(r"-o \S+-pair(\d-\d) ", line).group(1)
               for line in lines if " train " in line]
    assert trained == ["1-3", "1-4"]
    joined = next(line for line in lines if "-outer1.pt " in line)
    assert " ".join(f"{kept}/pair{p}.pt" for p in ("0-1", "1-2", "1-3", "1-4")) in joined


def test_singles_scores_each_kept_network_alone_on_the_folds_it_never_saw(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    for p in ("0-1", "2-4"):
        (kept / f"pair{p}.pt").touch()
    lines = dry_run(tmp_path, "singles", f"KEPT={kept}")
    run = f"{tmp_path}/r"
    assert not [line for line in lines if " train " in line]
    compares = " ".join(line for line in lines if " compare " in line)
    for p in ("0-1", "2-4"):
        scored = next(line for line in lines if f"-o {run}-single{p} " in line)
        assert f"evaluate data --cv {kept}/pair{p}.pt --tta " in scored
        assert "--nested-post" not in scored  # one network: no other folds to choose on
        assert f"compare {run}-members-cv {run}-single{p} --variant plain" in compares
    assert any("--cv-members" in line and f"-o {run}-members-cv " in line for line in lines)


def test_no_trained_network_is_removed_as_an_intermediate(tmp_path):
    lines = dry_run(tmp_path, "model", "seeds", "restart", "seedpairs", "wide", "nested")
    assert not [line for line in lines if line.startswith("rm ")]
    assert sum(f"-o {tmp_path}/r-seed" in line and " train " in line for line in lines) == 6
