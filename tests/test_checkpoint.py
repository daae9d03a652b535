"""Checkpoints: bundling one run or an ensemble of runs into a shippable model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gliomaseg.checkpoint import (
    CheckpointError,
    bundle,
    load_checkpoint,
    member_states,
    model_from_checkpoint,
    save_checkpoint,
)
from gliomaseg.config import Config, load_config
from gliomaseg.inference import bundled_model_path, load_model
from gliomaseg.model import Ensemble, UNet, build_model

CFG = Config().replace(data={"size": 32, "context": 0}, model={"base_filters": 4, "depth": 2})


def make_run(folder, seed: int, cfg: Config = CFG, train=("A", "B"), val=("C",)):
    """A run folder as `train` leaves it: best.pt and run.json."""
    torch.manual_seed(seed)
    net = build_model(cfg.data.in_channels, cfg.model).eval()
    save_checkpoint(folder / "best.pt", {"model": net.state_dict(), "config": cfg.to_dict(),
                                         "epoch": 7, "best_dice": 0.5 + seed / 100,
                                         "best_epoch": 5, "val_cases": list(val)})
    (folder / "run.json").write_text(json.dumps({"data": "x", "train": list(train),
                                                 "val": list(val)}))
    return folder / "best.pt", net


def test_bundle_of_one_run_keeps_its_network_and_provenance(tmp_path):
    src, net = make_run(tmp_path / "r0", seed=0)
    out = bundle([src], tmp_path / "model.pt", post={"tta": True}, fp16=False)
    model, cfg = model_from_checkpoint(load_checkpoint(tmp_path / "model.pt"))
    assert isinstance(model, UNet) and cfg.model.members == 1 and cfg.post.tta
    assert (out["best_dice"], out["best_epoch"]) == (0.5, 5)
    assert (out["train_cases"], out["val_cases"]) == (["A", "B"], ["C"])
    assert "optimizer" not in load_checkpoint(tmp_path / "model.pt")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


def test_bundle_of_several_runs_is_an_ensemble_of_their_networks(tmp_path):
    runs = [make_run(tmp_path / f"r{i}", seed=i, train=[c for c in "ABC" if c != v], val=[v])
            for i, v in enumerate("ABC")]
    out = bundle([src for src, _ in runs], tmp_path / "ens.pt", fp16=False)
    model, cfg = model_from_checkpoint(load_checkpoint(tmp_path / "ens.pt"))
    assert isinstance(model, Ensemble) and cfg.model.members == 3
    assert [m["val_cases"] for m in out["members"]] == [["A"], ["B"], ["C"]]
    assert out["train_cases"] == out["val_cases"] == ["A", "B", "C"]  # every patient was seen
    assert "best_dice" not in out  # no single validation score describes an ensemble
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = torch.stack([net(x) for _, net in runs]).mean(dim=0)
        torch.testing.assert_close(model(x), expected)


def test_bundles_of_one_run_ensemble_like_the_runs_and_keep_their_patients(tmp_path):
    """`make nested` keeps each finished network slim (a bundle of its run alone, no run.json
    beside it) and ensembles those later: the weights and the training patients must be the
    ones bundling the runs directly gives, or `evaluate --cv` would score trained patients."""
    runs = [make_run(tmp_path / f"r{i}", seed=i, train=[c for c in "ABC" if c != v], val=[v])
            for i, v in enumerate("ABC")]
    slim = []
    for i, (src, _) in enumerate(runs):
        bundle([src], tmp_path / "kept" / f"pair{i}.pt")
        slim.append(tmp_path / "kept" / f"pair{i}.pt")
    direct = bundle([src for src, _ in runs], tmp_path / "direct.pt")
    out = bundle(slim, tmp_path / "ens.pt")
    assert [m["train_cases"] for m in out["members"]] == [["B", "C"], ["A", "C"], ["A", "B"]]
    assert [m["val_cases"] for m in out["members"]] == [["A"], ["B"], ["C"]]
    assert [m["epoch"] for m in out["members"]] == [7, 7, 7]
    assert out["model"].keys() == direct["model"].keys()
    for key, weight in direct["model"].items():
        assert torch.equal(out["model"][key], weight), key


def test_member_states_split_an_ensemble_back_into_its_runs(tmp_path):
    runs = [make_run(tmp_path / f"r{i}", seed=i, train=[c for c in "ABC" if c != v], val=[v])
            for i, v in enumerate("ABC")]
    bundle([src for src, _ in runs], tmp_path / "ens.pt", post={"tta": True}, fp16=False)
    members = member_states(load_checkpoint(tmp_path / "ens.pt"))
    assert [m["val_cases"] for m in members] == [["A"], ["B"], ["C"]]
    assert members[1]["train_cases"] == ["A", "C"] and members[2]["best_dice"] == 0.52
    x = torch.randn(2, 1, 32, 32)
    for state, (_, net) in zip(members, runs, strict=True):
        model, cfg = model_from_checkpoint(state)
        assert isinstance(model, UNet) and cfg.model.members == 1 and cfg.post.tta
        with torch.no_grad():
            torch.testing.assert_close(model(x), net(x))
    src, _ = runs[0]
    with pytest.raises(CheckpointError, match="not an ensemble"):
        member_states(load_checkpoint(src))
    bundle([src], tmp_path / "one.pt")
    with pytest.raises(CheckpointError, match="not an ensemble"):
        member_states(load_checkpoint(tmp_path / "one.pt"))


def test_the_shipped_model_is_the_recipe_that_make_model_trains():
    """MODEL.md's "Reproduce": configs/bundled.json and bundled-post.json are the shipped recipe."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    post = json.loads((configs / "bundled-post.json").read_text())
    recipe = load_config(configs / "bundled.json")
    state = load_checkpoint(bundled_model_path())
    assert Config.from_dict(state["config"]) == recipe.replace(model={"members": 5}, post=post)


def test_bundle_stores_fp16_and_loads_within_fp16_noise(tmp_path):
    src, net = make_run(tmp_path / "r0", seed=0)
    bundle([src, src], tmp_path / "ens.pt")
    state = load_checkpoint(tmp_path / "ens.pt")
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    model, _ = model_from_checkpoint(state)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), net(x).numpy(), atol=2e-2)


def test_loading_zeroes_denormal_weights_and_keeps_the_others_and_the_output(tmp_path):
    """Denormal weights (an fp32 run's dead channels) slow x86 CPUs about 5x; zero is exact."""
    src, net = make_run(tmp_path / "r0", seed=0)
    state = load_checkpoint(src)
    weight = state["model"]["encoder.0.0.weight"]
    weight.view(-1)[:5] = torch.tensor([1e-39, -3e-40, 1e-45, 2e-38, 0.0])
    model, _ = model_from_checkpoint(state)
    loaded = model.state_dict()["encoder.0.0.weight"].view(-1)
    assert loaded[:5].tolist() == [0.0, 0.0, 0.0, pytest.approx(2e-38), 0.0]
    for name, value in model.state_dict().items():
        if name != "encoder.0.0.weight":
            assert torch.equal(value, state["model"][name]), name
    assert torch.equal(loaded[5:], weight.view(-1)[5:])
    net.load_state_dict(state["model"])
    x = torch.randn(2, CFG.data.in_channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x))


def test_bundle_refuses_mixed_shapes_nested_ensembles_and_nothing(tmp_path):
    a, _ = make_run(tmp_path / "a", seed=0)
    b, _ = make_run(tmp_path / "b", seed=1, cfg=CFG.replace(model={"base_filters": 8}))
    with pytest.raises(CheckpointError, match="one network shape"):
        bundle([a, b], tmp_path / "x.pt")
    bundle([a, a], tmp_path / "ens.pt")
    with pytest.raises(CheckpointError, match="already an ensemble"):
        bundle([tmp_path / "ens.pt", a], tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="at least one"):
        bundle([], tmp_path / "z.pt")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_weights_that_do_not_fit_the_config_are_a_checkpoint_error(tmp_path):
    src, _ = make_run(tmp_path / "r0", seed=0)
    state = load_checkpoint(src)
    state["config"] = CFG.replace(model={"members": 2}).to_dict()
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(state)


def test_bundle_keeps_masks_and_drops_training_state(tiny_checkpoint, synth_root, tmp_path):
    out = tmp_path / "model.pt"
    bundle([tiny_checkpoint], out, post={"min_size": 5})
    state = load_checkpoint(out)
    assert "optimizer" not in state and state["config"]["post"]["min_size"] == 5
    assert out.stat().st_size < 0.7 * tiny_checkpoint.stat().st_size  # fp16 storage
    case = sorted(p for p in synth_root.iterdir() if p.is_dir())[0]
    a = load_model(tiny_checkpoint).predict(case).probabilities
    b = load_model(out).predict(case).probabilities
    np.testing.assert_allclose(a, b, atol=2e-2)  # fp16 weights: probabilities barely move
