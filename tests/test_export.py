"""ONNX export: one self-contained file + model.json, parity with PyTorch, optional int8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import gliomaseg
from gliomaseg import export
from gliomaseg.checkpoint import (
    CheckpointError,
    bundle,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from gliomaseg.cli import main
from gliomaseg.config import Config, DataConfig
from gliomaseg.data import find_patients, read_patient
from gliomaseg.inference import onnx_logits_fn, torch_logits_fn
from gliomaseg.model import build_model
from gliomaseg.preprocess import prepare_volume

TOL = {"rtol": 1e-3, "atol": 1e-4}  # fp32 vs fp32: only summation order differs


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export.export_checkpoint(tiny_checkpoint, out)
    return out


@pytest.fixture(scope="module")
def torch_net(tiny_checkpoint):
    return model_from_checkpoint(load_checkpoint(tiny_checkpoint))


def assert_masks_agree(a: np.ndarray, b: np.ndarray, probs: np.ndarray, threshold: float):
    """Equal masks, except possibly where the probability is within float noise of the threshold."""
    differ = a != b
    assert not (differ & (np.abs(probs - threshold) > 1e-4)).any()
    assert differ.sum() <= max(1, a.size // 100_000)


def test_export_writes_one_self_contained_file_and_metadata(onnx_model, tiny_checkpoint):
    assert sorted(p.name for p in onnx_model.parent.iterdir()) == ["model.json", "model.onnx"]
    proto = onnx.load(str(onnx_model), load_external_data=False)
    onnx.checker.check_model(proto)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]

    meta = json.loads((onnx_model.parent / "model.json").read_text())
    cfg = Config.from_dict(meta["config"])
    assert cfg == Config.from_dict(load_checkpoint(tiny_checkpoint)["config"])
    assert meta["input"]["channels"] == ["pre-contrast", "FLAIR", "post-contrast"]
    assert meta["input"]["shape"] == ["batch", 3, 64, 64]
    assert meta["threshold"] == cfg.post.threshold
    assert meta["postprocessing"]["largest_component"] == cfg.post.largest_component
    assert meta["onnx_sha256"] == export.sha256(onnx_model)
    assert meta["training"]["val_cases"] and meta["training"]["train_cases"]
    assert meta["gliomaseg_version"] == gliomaseg.__version__


def test_logits_parity_on_synthetic_slices(onnx_model, torch_net, synth_root):
    net, cfg = torch_net
    x = prepare_volume(read_patient(find_patients(synth_root)[0]).image, cfg.data)
    run_onnx, run_torch = onnx_logits_fn(onnx_model), torch_logits_fn(net)
    for batch in (x[:1], x[:5], x):  # dynamic batch size
        torch.testing.assert_close(torch.from_numpy(run_onnx(batch)),
                                   torch.from_numpy(run_torch(batch)), **TOL)


def test_onnx_backend_predict_equals_torch(onnx_model, tiny_checkpoint, synth_root):
    by_torch = gliomaseg.load_model(tiny_checkpoint)
    by_onnx = gliomaseg.load_model(onnx_model, backend="onnx")
    assert by_onnx.backend == "onnx" and by_onnx.cfg == by_torch.cfg
    for folder in find_patients(synth_root)[:2]:
        a, b = by_torch.predict(folder), by_onnx.predict(folder)
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
        assert_masks_agree(a.mask, b.mask, a.probabilities, by_torch.cfg.post.threshold)


@pytest.mark.real
def test_parity_on_real_slices(onnx_model, tiny_checkpoint, torch_net, real_root):
    net, cfg = torch_net
    patient = read_patient(find_patients(real_root)[0])
    x = prepare_volume(patient.image, cfg.data)
    torch.testing.assert_close(torch.from_numpy(onnx_logits_fn(onnx_model)(x)),
                               torch.from_numpy(torch_logits_fn(net)(x)), **TOL)
    a = gliomaseg.load_model(tiny_checkpoint).predict(patient)
    b = gliomaseg.load_model(onnx_model, backend="onnx").predict(patient)
    assert a.mask.shape == patient.image.shape[:3]
    assert_masks_agree(a.mask, b.mask, a.probabilities, cfg.post.threshold)


def test_cli_export_then_predict_with_onnx_backend(tiny_checkpoint, synth_root, tmp_path,
                                                   capsys):
    model = tmp_path / "dist" / "net.onnx"
    assert main(["export", "--model", str(tiny_checkpoint), "-o", str(model)]) == 0
    assert (tmp_path / "dist" / "net.json").is_file()
    folder = find_patients(synth_root)[2]
    outs = {}
    capsys.readouterr()
    for backend, m in (("torch", tiny_checkpoint), ("onnx", model)):
        outs[backend] = tmp_path / backend  # no --backend: "auto" goes by the file's suffix
        assert main(["predict", str(folder), "-o", str(outs[backend]), "--model", str(m)]) == 0
        assert f"({backend})" in capsys.readouterr().out
    assert main(["predict", str(folder), "-o", str(tmp_path / "forced"), "--model", str(model),
                 "--backend", "torch"]) == 2
    assert "needs --backend onnx" in capsys.readouterr().err
    probs = gliomaseg.load_model(tiny_checkpoint).predict(folder).probabilities
    tifs = sorted((outs["torch"] / folder.name).glob("*_mask.tif"))
    a = np.stack([np.asarray(Image.open(p)) for p in tifs])
    b = np.stack([np.asarray(Image.open(outs["onnx"] / folder.name / p.name)) for p in tifs])
    assert_masks_agree(a, b, probs, 0.5)


def test_export_refusals_are_one_line(tiny_checkpoint, onnx_model, tmp_path, capsys,
                                      monkeypatch):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    target = tmp_path / "m.onnx"
    monkeypatch.setattr("gliomaseg.inference.WEIGHTS_DIR", tmp_path / "none")
    cases = [
        (["export", "--model", str(junk), "-o", str(target)], "not a readable checkpoint"),
        (["export", "--model", str(tiny_checkpoint), "-o", str(tmp_path / "m.txt")], ".onnx"),
        (["export", "-o", str(target)], "no bundled model"),
        (["export", "--model", str(tiny_checkpoint), "-o", str(onnx_model)], "--overwrite"),
        (["export", "--model", str(tiny_checkpoint), "-o", str(target), "--int8"], "--calibrate"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not target.exists()


def test_onnx_load_errors(onnx_model, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(onnx_model, lone)
    with pytest.raises(CheckpointError, match="lone.json"):
        gliomaseg.load_model(lone, backend="onnx")
    with pytest.raises(CheckpointError, match="--backend onnx"):
        gliomaseg.load_model(onnx_model, backend="torch")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    shutil.copy(onnx_model.with_suffix(".json"), tmp_path / "broken.json")
    with pytest.raises(CheckpointError, match="not a loadable ONNX"):
        gliomaseg.load_model(broken, backend="onnx")


def test_context_model_exports_all_channels(tmp_path):
    """A 2.5D model (context 1) takes 9 named channels; parity holds for it too."""
    cfg = Config().replace(data={"size": 32, "context": 1, "channels": "rgb"},
                           model={"base_filters": 4, "depth": 2})
    torch.manual_seed(0)
    net = build_model(cfg.data.in_channels, cfg.model).eval()
    ckpt = tmp_path / "ctx.pt"
    save_checkpoint(ckpt, {"model": net.state_dict(), "config": cfg.to_dict()})
    meta = export.export_checkpoint(ckpt, tmp_path / "ctx.onnx")
    assert meta["input"]["shape"] == ["batch", 9, 32, 32]
    assert meta["input"]["channels"][:3] == ["pre-contrast[-1]", "FLAIR[-1]", "post-contrast[-1]"]
    assert meta["input"]["channels"][4] == "FLAIR[+0]"
    x = np.random.default_rng(0).normal(size=(3, 9, 32, 32)).astype(np.float32)
    torch.testing.assert_close(torch.from_numpy(onnx_logits_fn(tmp_path / "ctx.onnx")(x)),
                               torch.from_numpy(torch_logits_fn(net)(x)), **TOL)


@pytest.mark.parametrize("option", [{"deep_supervision": True}, {"block": "residual"},
                                    {"activation": "leaky_relu"}])
def test_model_options_export_one_full_resolution_output_with_parity(option, tmp_path):
    """Deep supervision's extra heads are training-only; residual shortcuts export as Adds;
    LeakyReLU is an ONNX operator of its own."""
    cfg = Config().replace(data={"size": 32, "context": 0}, model={
        "base_filters": 4, "depth": 2, **option})
    torch.manual_seed(0)
    net = build_model(cfg.data.in_channels, cfg.model).eval()
    ckpt = tmp_path / "net.pt"
    save_checkpoint(ckpt, {"model": net.state_dict(), "config": cfg.to_dict()})
    export.export_checkpoint(ckpt, tmp_path / "net.onnx")
    assert len(onnx.load(str(tmp_path / "net.onnx")).graph.output) == 1
    x = np.random.default_rng(0).normal(size=(2, cfg.data.in_channels, 32, 32)).astype(np.float32)
    torch.testing.assert_close(torch.from_numpy(onnx_logits_fn(tmp_path / "net.onnx")(x)),
                               torch.from_numpy(torch_logits_fn(net)(x)), **TOL)


def test_channel_names_flair_only():
    assert export.channel_names(DataConfig(channels="flair", context=0)) == ["FLAIR"]
    assert len(export.channel_names(DataConfig(channels="flair", context=2))) == 5


def test_int8_accepted_and_refused(onnx_model, synth_root, tmp_path, capsys, monkeypatch):
    fp32 = tmp_path / "model.onnx"
    shutil.copy(onnx_model, fp32)
    shutil.copy(onnx_model.with_suffix(".json"), tmp_path / "model.json")
    patients = [read_patient(f) for f in find_patients(synth_root)[:2]]
    report = export.export_int8(fp32, patients, max_slices=16)
    assert report.accepted and report.path == tmp_path / "model.int8.onnx"
    assert report.fp32_dice - report.int8_dice <= export.INT8_MAX_DROP
    meta = json.loads((tmp_path / "model.int8.json").read_text())
    assert meta["precision"] == "int8"
    assert meta["int8_calibration"]["int8_pv_dsc"] == report.int8_dice
    assert meta["int8_calibration"]["fp32_pv_dsc"] == report.fp32_dice
    int8 = gliomaseg.load_model(report.path, backend="onnx")
    assert int8.predict(patients[0]).mask.shape == patients[0].mask.shape
    assert report.path.stat().st_size < fp32.stat().st_size

    refused = export.export_int8(fp32, patients, max_drop=-1.0, max_slices=16)  # unreachable
    assert not refused.accepted and refused.path is None
    assert not (tmp_path / "model.int8.onnx").exists() and fp32.is_file()


def test_cli_int8_refusal_reports_both_numbers(tiny_checkpoint, synth_root, tmp_path, capsys,
                                               monkeypatch):
    """The accepted path is tested above; here the CLI's refusal keeps the fp32 model."""
    out = tmp_path / "q" / "model.onnx"
    monkeypatch.setattr(export, "INT8_MAX_DROP", -1.0)  # make any int8 model unacceptable
    assert main(["export", "--model", str(tiny_checkpoint), "-o", str(out), "--int8",
                 "--calibrate", str(synth_root), "--cases", find_patients(synth_root)[0].name]) == 1
    err = capsys.readouterr().err
    assert "int8 refused" in err and "fp32 0." in err and "int8 0." in err
    assert "kept the fp32 model" in err
    assert out.is_file() and not (out.parent / "model.int8.onnx").exists()


def test_ensemble_exports_as_one_graph_with_parity(tiny_checkpoint, torch_net, tmp_path):
    """A bundled ensemble is one ONNX file; its logits match PyTorch's mean of the members."""
    bundle([tiny_checkpoint, tiny_checkpoint], tmp_path / "ens.pt", fp16=False)
    meta = export.export_checkpoint(tmp_path / "ens.pt", tmp_path / "ens.onnx")
    assert meta["config"]["model"]["members"] == 2 and len(meta["training"]["members"]) == 2
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    net, _ = torch_net
    torch.testing.assert_close(torch.from_numpy(onnx_logits_fn(tmp_path / "ens.onnx")(x)),
                               torch.from_numpy(torch_logits_fn(net)(x)), **TOL)


@pytest.fixture
def bundled_tiny(tiny_checkpoint, tmp_path, monkeypatch) -> Path:
    """The tiny model installed as the bundled one (a weights folder of its own)."""
    from gliomaseg import inference

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_checkpoint, weights / "model.pt")
    monkeypatch.setattr(inference, "WEIGHTS_DIR", weights)
    return weights


def test_bundled_model_on_onnx_is_exported_once_and_reused(bundled_tiny, synth_root, tmp_path,
                                                          monkeypatch):
    weights = bundled_tiny
    monkeypatch.setenv("GLIOMASEG_CACHE", str(tmp_path / "cache"))
    by_onnx = gliomaseg.load_model(backend="onnx")
    exported = Path(by_onnx.source)
    assert by_onnx.backend == "onnx" and exported.parent == tmp_path / "cache" / "onnx"
    assert exported.name == f"model-{export.sha256(weights / 'model.pt')[:12]}.onnx"
    first = exported.stat().st_mtime_ns
    assert Path(gliomaseg.load_model(backend="onnx").source) == exported
    assert exported.stat().st_mtime_ns == first  # reused, not exported again
    by_torch = gliomaseg.load_model()
    folder = find_patients(synth_root)[0]
    a, b = by_torch.predict(folder), by_onnx.predict(folder)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    assert not list(weights.glob("*.onnx"))  # the package folder is never written to


def test_exported_once_exports_new_weights_anew(tiny_checkpoint, tmp_path):
    a = export.exported_once(tiny_checkpoint, tmp_path)
    changed = tmp_path / "model.pt"
    state = torch.load(tiny_checkpoint, weights_only=False)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, changed)
    b = export.exported_once(changed, tmp_path)
    assert a != b and a.is_file() and b.is_file()
    x = np.zeros((1, *export.read_onnx_metadata(a)["input"]["shape"][1:]), np.float32)
    assert not np.allclose(onnx_logits_fn(a)(x), onnx_logits_fn(b)(x))


def test_unwritable_cache_is_a_one_line_error(bundled_tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GLIOMASEG_CACHE", str(blocker))
    with pytest.raises(CheckpointError, match="GLIOMASEG_CACHE") as info:
        gliomaseg.load_model(backend="onnx")
    assert "\n" not in str(info.value)
