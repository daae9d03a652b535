import csv
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from tqdm import tqdm

from gliomaseg.checkpoint import load_checkpoint, model_from_checkpoint
from gliomaseg.config import Config
from gliomaseg.data import DataError, list_cases
from gliomaseg.model import dead_channels
from gliomaseg.train import (
    CropDataset,
    Progress,
    build_optimizer,
    build_training,
    choose_cases,
    lr_factor,
    stop_code,
    train,
    train_epoch,
)


def read_rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_tiny_run_learns_well_above_chance(tiny_run):
    rows = read_rows(tiny_run)
    best = max(float(r["val_dice"]) for r in rows)
    # chance level (predicting everything or nothing) is ~0.1 or 0 here
    assert best > 0.5, rows
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(float(r["grad_norm_max"]) >= float(r["grad_norm"]) > 0 for r in rows), rows
    # the last row's dead-channel count is that of the weights last.pt kept
    last, _ = model_from_checkpoint(load_checkpoint(tiny_run / "last.pt"))
    assert int(rows[-1]["dead_channels"]) == dead_channels(last)[0]
    for name in ("best.pt", "last.pt", "config.json", "run.json", "curves.png", "train.log"):
        assert (tiny_run / name).is_file(), name


def test_training_falls_back_to_fp32_and_says_so_without_native_bf16(synth_root, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cfg = TINY.replace(train={"bf16": True, "max_epochs": 1, "steps_per_epoch": 2})
    cases = list_cases(synth_root)
    train(synth_root, tmp_path / "run", cfg, cases[:3], cases[3:], use_cache=False)
    assert "on cpu, fp32 (no native bf16 here)" in (tmp_path / "run" / "train.log").read_text()


def test_training_flushes_denormals_to_zero(synth_root, tmp_path):
    """Denormal weights make x86 CPUs several times slower (bench_train.py denormal)."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    denormal = torch.tensor([1e-39])
    assert (denormal * 2).item() > 0  # computed: 2e-39
    cfg = TINY.replace(train={"max_epochs": 1, "steps_per_epoch": 1})
    cases = list_cases(synth_root)
    try:
        train(synth_root, tmp_path / "run", cfg, cases[:3], cases[3:], use_cache=False)
        assert (denormal * 2).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_checkpoint_holds_model_config_and_training_state(tiny_run):
    state = load_checkpoint(tiny_run / "last.pt")
    for key in ("model", "config", "optimizer", "epoch", "torch_rng", "best_dice", "elapsed"):
        assert key in state
    model, cfg = model_from_checkpoint(load_checkpoint(tiny_run / "best.pt"))
    assert cfg == Config.from_dict(json.loads((tiny_run / "config.json").read_text()))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_validation_patients_never_enter_training(tiny_run):
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["val"] and not set(run["train"]) & set(run["val"])


CASES = [f"TCGA_CS_{i}_20000101" for i in range(6)]


def test_choose_cases_trains_on_every_other_patient_by_default(tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"train": CASES[2:], "val": CASES[:2]}]))
    for kwargs in ({"splits": None, "val_cases": CASES[:2]}, {"splits": splits, "val_cases": None}):
        train_cases, val = choose_cases(CASES, Config(), fold=0, **kwargs)
        assert (train_cases, val) == (CASES[2:], CASES[:2])
    train_cases, val = choose_cases(CASES, Config(), None, None, None)
    assert val and sorted(train_cases + val) == CASES


def test_choose_cases_honours_a_splits_fold_that_trains_on_fewer_patients(tmp_path):
    # A fold of `make nested` (`split --pair-of`) leaves other patients out of both lists.
    splits = tmp_path / "inner.json"
    splits.write_text(json.dumps([{"train": CASES[2:4], "val": CASES[4:]}]))
    assert choose_cases(CASES, Config(), splits, 0, None) == (CASES[2:4], CASES[4:])


@pytest.mark.parametrize("fold", [{"train": CASES[1:3], "val": CASES[:2]},
                                  {"train": ["TCGA_XX_0000_20000101"], "val": CASES[:1]},
                                  {"val": ["TCGA_XX_0000_20000101"]}, {"train": CASES}, "oops"])
def test_choose_cases_rejects_an_inconsistent_splits_fold(tmp_path, fold):
    splits = tmp_path / "bad.json"
    splits.write_text(json.dumps([fold]))
    with pytest.raises(DataError):
        choose_cases(CASES, Config(), splits, 0, None)


def test_choose_cases_rejects_a_fold_the_splits_file_lacks(tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"val": CASES[:1]}]))
    with pytest.raises(DataError, match="no fold 1"):
        choose_cases(CASES, Config(), splits, 1, None)


def test_samples_are_a_pure_function_of_seed_epoch_index(synth_root):
    from gliomaseg.train import load_cases

    cases = load_cases(synth_root, list_cases(synth_root)[:2], TINY, use_cache=False)
    a, b = CropDataset(cases, TINY), CropDataset(cases, TINY)
    for i in (0, 5):
        torch.testing.assert_close(a[i][0], b[i][0])
    a.epoch = 1
    assert not torch.equal(a[0][0], b[0][0])
    x, y = a[3]
    assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32)
    assert set(np.unique(y.numpy())) <= {0.0, 1.0}  # nearest interpolation keeps labels binary


def test_foreground_fraction_biases_crops_to_tumour(synth_root):
    from gliomaseg.train import load_cases

    cases = load_cases(synth_root, list_cases(synth_root)[:2], TINY, use_cache=False)
    def share(f):
        ds = CropDataset(cases, TINY.replace(train={"foreground_fraction": f}))
        return np.mean([ds[i][1].sum() > 0 for i in range(60)])
    assert share(1.0) > 0.9 > share(0.0)


@pytest.mark.parametrize("sampling", ["slice", "patient"])
def test_patient_sampling_weighs_each_patient_the_same(sampling):
    """Two patients with 2 and 18 tumour slices: by slice the second gets about 90% of the
    tumour patches, by patient about half."""
    from gliomaseg.train import Case

    def case(tumour, total):
        mask = np.zeros((total, 8, 8), bool)
        mask[:tumour, 2:4, 2:4] = True
        return Case("x", np.zeros((total, 1, 8, 8), np.float32), mask, mask)

    ds = CropDataset([case(2, 20), case(18, 20)],
                     Config().replace(train={"sampling": sampling, "foreground_fraction": 1.0}))
    rng = np.random.default_rng(0)
    draws = [ds.draw(rng) for _ in range(2000)]
    assert all(on and ds.cases[c].mask[s].any() for c, s, on in draws)
    share_small = np.mean([c == 0 for c, _, _ in draws])
    assert share_small == pytest.approx(0.1 if sampling == "slice" else 0.5, abs=0.04)


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10) < 0.05
    assert lr_factor(20, 100, 10, time_used=1.0) == pytest.approx(0.01)  # time budget spent
    assert lr_factor(20, 100, 10, time_used=0.5) < lr_factor(20, 100, 10)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adamw_decouples_weight_decay_from_the_gradient(name):
    """With no gradient from the loss, AdamW shrinks every weight by the factor 1 - lr * wd;
    Adam's L2 term goes through its normalisation instead and moves each weight by about lr."""
    cfg = Config().replace(train={"optimizer": name, "lr": 1e-2, "weight_decay": 0.1,
                                  "channels_last": False})
    model, optimizer, _ = build_training(cfg, torch.device("cpu"), None, None)
    weight = next(p for p in model.parameters() if p.dim() == 4)
    before = weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decoupled = torch.allclose(weight, before * (1 - 1e-2 * 0.1))
    assert decoupled == (name == "adamw")
    assert isinstance(optimizer, torch.optim.AdamW) == (name == "adamw")


@pytest.mark.parametrize("decay_norms", [True, False])
def test_decay_norms_decides_whether_batch_norm_and_biases_shrink(decay_norms):
    """With no gradient from the loss, Adam's L2 term moves every decayed parameter towards 0;
    without `decay_norms` the batch-norm scales and shifts and the biases stay put, while the
    convolution weights still shrink."""
    cfg = Config().replace(train={"lr": 1e-2, "weight_decay": 0.1, "channels_last": False,
                                  "decay_norms": decay_norms})
    model, optimizer, _ = build_training(cfg, torch.device("cpu"), None, None)
    for p in model.parameters():
        p.data.fill_(0.5)  # BN scales start at 1 and shifts at 0: give every one room to move
        p.grad = torch.zeros_like(p)
    optimizer.step()
    conv = {bool((p < 0.5).all()) for p in model.parameters() if p.dim() > 1}
    one_d = {bool((p < 0.5).all()) for p in model.parameters() if p.dim() <= 1}
    assert conv == {True}  # every convolution weight shrank either way
    assert one_d == {decay_norms}


def test_sgd_is_nesterov_with_the_configured_momentum():
    cfg = Config().replace(train={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9})
    _, optimizer, _ = build_training(cfg, torch.device("cpu"), None, None)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["momentum"], group["nesterov"]) == (0.9, True)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_grad_clip_bounds_the_step_of_plain_sgd(clip):
    """With lr 1 and no momentum an SGD step moves the weights by the gradient itself, so its
    norm is the gradient's: 10 unclipped (the loss is 10 * w for input 1), else `clip`."""
    cfg = Config().replace(train={"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                                  "grad_clip": clip, "channels_last": False})
    net = torch.nn.Linear(1, 1, bias=False)
    optimizer = build_optimizer(net, cfg.train)
    before = net.weight.detach().clone()
    batches = tqdm([(torch.ones(1, 1), torch.zeros(1, 1))], disable=True)
    fit = train_epoch(net, batches, optimizer, lambda out, y: 10 * out.sum(), cfg,
                      torch.device("cpu"), nullcontext(), lambda step: 1.0, 0)
    assert (before - net.weight).norm().item() == pytest.approx(clip or 10.0)
    # metrics.csv logs the norm before clipping, so it shows how far the clip cut
    assert fit["grad_norm"] == fit["grad_norm_max"] == pytest.approx(10.0)


def test_progress_counts_epochs_since_the_best_and_stops_on_patience_after_min_epochs():
    cfg = Config().replace(train={"patience": 1, "min_epochs": 3, "max_minutes": 0}).train
    p = Progress().record(1, 0.5, 10.0).record(2, 0.4, 10.0)
    assert (p.best_dice, p.best_epoch, p.bad_epochs, p.elapsed) == (0.5, 1, 1, 20.0)
    assert p.stop_reason(cfg) is None  # patience spent, but before min_epochs
    assert p.record(3, 0.6, 1.0).stop_reason(cfg) is None  # improved: the count restarts
    assert p.record(3, 0.45, 1.0).stop_reason(cfg) == "no better validation PV-DSC for 2 epochs"


def test_progress_stops_when_the_time_budget_is_spent_and_survives_a_checkpoint():
    cfg = Config().replace(train={"patience": 100, "max_minutes": 1.0}).train
    p = Progress().record(1, 0.5, 59.0)
    assert p.stop_reason(cfg) is None
    assert p.record(2, 0.9, 2.0).stop_reason(cfg) == "time budget reached"
    assert Progress.from_checkpoint({"model": {}, **p.__dict__}) == p


class FakeTrial:
    """The two calls train() makes on an Optuna trial."""

    def __init__(self, prune: bool):
        self.prune, self.reported = prune, []

    def report(self, value: float, step: int) -> None:
        self.reported.append((step, value))

    def should_prune(self) -> bool:
        return self.prune


def test_stop_code_goes_on_stops_or_prunes_and_a_stop_reason_wins():
    cfg = Config().replace(train={"patience": 1, "min_epochs": 1, "max_minutes": 0}).train
    improving = Progress().record(1, 0.5, 1.0)
    stalled = improving.record(2, 0.4, 1.0)
    logged = []
    assert stop_code(improving, 0.5, cfg, None, logged.append) == 0
    trial = FakeTrial(prune=True)
    assert stop_code(improving, 0.5, cfg, trial, logged.append) == 2
    assert trial.reported == [(1, 0.5)]
    assert stop_code(stalled, 0.4, cfg, FakeTrial(prune=False), logged.append) == 1
    assert stop_code(stalled, 0.4, cfg, FakeTrial(prune=True), logged.append) == 1
    assert logged == ["stopping: no better validation PV-DSC for 1 epochs"] * 2


def test_same_seed_same_run(synth_root, tmp_path):
    cases = list_cases(synth_root)
    cfg = TINY.replace(train={"max_epochs": 1, "steps_per_epoch": 3})
    for name in ("a", "b"):
        train(synth_root, tmp_path / name, cfg, cases[:3], cases[3:], use_cache=False)
    sa, sb = (load_checkpoint(tmp_path / n / "last.pt")["model"] for n in "ab")
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key])


def test_early_stopping_stops_before_max_epochs(synth_root, tmp_path):
    cases = list_cases(synth_root)
    cfg = TINY.replace(train={"max_epochs": 30, "patience": 1, "min_epochs": 1,
                              "steps_per_epoch": 2, "lr": 1e-7})  # cannot improve
    result = train(synth_root, tmp_path / "r", cfg, cases[:3], cases[3:], use_cache=False)
    assert len(read_rows(tmp_path / "r")) < 30 and result["best_epoch"] >= 1


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_time_budget_counts_the_chosen_clock(synth_root, tmp_path, monkeypatch, clock):
    """Only the chosen clock spends the budget: here the CPU clock runs an hour per call."""
    ticks = iter(range(0, 10**8, 3600))
    monkeypatch.setattr(time, "process_time", lambda: float(next(ticks)))
    cases = list_cases(synth_root)
    cfg = TINY.replace(train={"max_epochs": 3, "steps_per_epoch": 2, "max_minutes": 30.0,
                              "budget_clock": clock})
    train(synth_root, tmp_path / "r", cfg, cases[:3], cases[3:], use_cache=False)
    rows = read_rows(tmp_path / "r")
    assert len(rows) == (1 if clock == "cpu" else 3)
    assert float(rows[0]["cpu_seconds"]) == 3600.0


def test_cli_refuses_to_overwrite_a_run(synth_root, tiny_run):
    r = run_cli("train", synth_root, "-o", tiny_run)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_cli_rejects_unknown_config_key(synth_root, tmp_path):
    r = run_cli("train", synth_root, "-o", tmp_path / "r", "--set", "train.learning_rate=1")
    assert r.returncode == 2 and "unknown key" in r.stderr and "Traceback" not in r.stderr


def _train_args(synth_root, run, epochs):
    """CLI arguments for a TINY run of `epochs` epochs (config passed as a file, as users do)."""
    config = run.parent / f"{run.name}-config.json"
    config.write_text(json.dumps(TINY.replace(train={"max_epochs": epochs, "patience": 100})
                                 .to_dict()))
    return ["train", synth_root, "-o", run, "--no-cache", "--config", config]


@pytest.mark.slow
def test_killed_run_resumes_and_finishes(synth_root, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "gliomaseg.cli", *map(str, _train_args(synth_root, run, 4))]
    log = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.2)  # wait until epoch 1 is checkpointed, then kill mid-way through epoch 2
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "metrics.csv").exists(), (tmp_path / "stderr.txt").read_text()[-2000:]
    killed_at = len(read_rows(run))
    assert 1 <= killed_at < 4
    (run / ".last.pt.99999.tmp").write_bytes(b"half")  # as if the kill had hit a checkpoint write
    r = run_cli("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    rows = read_rows(run)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]  # unbroken log
    assert "resumed from" in (run / "train.log").read_text()
    model, _ = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    assert not list(run.glob(".*.tmp"))  # no half-written checkpoint left behind


def test_run_killed_before_its_first_checkpoint_starts_over(synth_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli(*_train_args(synth_root, run, 1)).returncode == 0
    for name in ("last.pt", "best.pt", "metrics.csv"):
        (run / name).unlink()  # as if killed during epoch 1: run.json and config.json only
    r = run_cli("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    assert [int(row["epoch"]) for row in read_rows(run)] == [1]
    saved = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert saved == TINY.replace(train={"max_epochs": 1, "patience": 100})  # its own, not defaults


def test_resume_of_a_folder_that_holds_no_run(tmp_path):
    r = run_cli("train", "--resume", tmp_path)
    assert r.returncode == 2 and "nothing to resume" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_two_process_ddp_on_gloo(synth_root, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port, so parallel runs cannot collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gliomaseg.cli",
           *map(str, _train_args(synth_root, run, 2)), "--set", "train.ema_decay=0.9"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert len(read_rows(run)) == 2  # only rank 0 writes: one row per epoch
    model_from_checkpoint(load_checkpoint(run / "best.pt"))
    # the weight average follows the unwrapped network, one update per step of each rank
    assert load_checkpoint(run / "last.pt")["ema_updates"] == 2 * (TINY.train.steps_per_epoch // 2)


def test_fine_tuning_starts_from_the_given_weights(synth_root, tiny_run, tmp_path):
    cases = list_cases(synth_root)
    start = load_checkpoint(tiny_run / "best.pt")
    # A different architecture in cfg is replaced by the checkpoint's, which the weights fit.
    cfg = TINY.replace(model={"base_filters": 4}, train={"max_epochs": 1, "steps_per_epoch": 1,
                                                         "lr": 1e-6})
    result = train(synth_root, tmp_path / "ft", cfg, cases[:3], cases[3:], use_cache=False,
                   init=tiny_run / "best.pt")
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["model"] == start["config"]["model"]
    # one step at a tiny learning rate: the score is the starting model's, far above chance
    assert result["best_dice"] == pytest.approx(start["best_dice"], abs=0.05)


def test_deep_supervision_run_trains_and_its_checkpoint_predicts_one_map(synth_root, tmp_path):
    cases = list_cases(synth_root)
    cfg = TINY.replace(model={"deep_supervision": True},
                       train={"max_epochs": 2, "steps_per_epoch": 5})
    train(synth_root, tmp_path / "ds", cfg, cases[:3], cases[3:], use_cache=False)
    rows = read_rows(tmp_path / "ds")
    assert len(rows) == 2 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    model, saved = model_from_checkpoint(load_checkpoint(tmp_path / "ds" / "best.pt"))
    assert saved.model.deep_supervision and len(model.aux_heads) == 2
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def _float_weights(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_ema_checkpoints_hold_the_average_of_the_steps_weights(synth_root, tmp_path):
    """Decay 0.5 over two steps: the first update copies w1, the second gives (w1 + w2) / 2,
    with w1 the weights after one step of the same run (no warm-up, so step 1 is identical)."""
    cases = list_cases(synth_root)
    one = TINY.replace(train={"max_epochs": 1, "steps_per_epoch": 1, "warmup_epochs": 0})
    two = one.replace(train={"steps_per_epoch": 2, "ema_decay": 0.5})
    train(synth_root, tmp_path / "one", one, cases[:3], cases[3:], use_cache=False)
    train(synth_root, tmp_path / "two", two, cases[:3], cases[3:], use_cache=False)
    w1 = _float_weights(load_checkpoint(tmp_path / "one" / "last.pt")["model"])
    last = load_checkpoint(tmp_path / "two" / "last.pt")
    w2 = _float_weights(last["train_model"])
    average = _float_weights(last["model"])
    assert last["ema_updates"] == 2
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in w1:
        torch.testing.assert_close(average[k], (w1[k] + w2[k]) / 2)
    best = _float_weights(load_checkpoint(tmp_path / "two" / "best.pt")["model"])
    for k in average:
        torch.testing.assert_close(best[k], average[k])


def test_ema_run_stopped_and_resumed_equals_the_run_in_one_go(synth_root, tmp_path):
    """The average survives a resume: had its update count been lost, the first update
    after the resume would restart it from the current weights."""
    cases = list_cases(synth_root)
    cfg = TINY.replace(train={"max_epochs": 2, "steps_per_epoch": 3, "ema_decay": 0.9,
                              "min_epochs": 1})
    train(synth_root, tmp_path / "whole", cfg, cases[:3], cases[3:], use_cache=False)
    stopped = train(synth_root, tmp_path / "cut", cfg, cases[:3], cases[3:], use_cache=False,
                    trial=FakeTrial(prune=True))  # stops after epoch 1, as a kill would
    assert stopped["pruned"] and len(read_rows(tmp_path / "cut")) == 1
    train(synth_root, tmp_path / "cut", cfg, cases[:3], cases[3:], resume=True, use_cache=False)
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("whole", "cut"))
    assert a["ema_updates"] == b["ema_updates"] == 6
    for key in ("model", "train_model"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k])
