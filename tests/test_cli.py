"""The CLI as a user meets it: help, version, check, split, synth, download, and bad input."""

import json
import subprocess
import sys
import types

import pytest
from conftest import run_cli

from gliomaseg import __version__
from gliomaseg.cli import build_parser, main
from gliomaseg.data import list_cases, read_patient


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "check" in r.stdout and "train" in r.stdout


def test_every_verb_has_help_with_examples():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"check", "split", "synth", "download", "train"} <= set(verbs)
    for name, sub in verbs.items():
        assert "examples:" in sub.format_help(), name


def test_check_reports_a_clean_dataset(synth_root, capsys):
    assert main(["check", str(synth_root)]) == 0
    out = capsys.readouterr().out
    assert "patients: 4" in out and "slices: 48" in out and "dataset is usable" in out


def test_check_json(synth_root, capsys):
    assert main(["check", str(synth_root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\ndataset is usable")[0])
    assert summary["patients"] == 4 and summary["problems"] == []


def test_check_verbose_lists_slices_and_tumour_slices_per_patient(synth_root, capsys):
    assert main(["check", str(synth_root), "--verbose"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    assert len(lines) == 4
    for line in lines:
        case, counts = line.strip().split(": ")
        patient = read_patient(synth_root / case)
        tumour = int(patient.mask.any(axis=(1, 2)).sum())
        assert counts == f"{patient.num_slices} slices, {tumour} with tumour"


def test_check_lists_every_problem_one_line_each(synth_root, tmp_path):
    import shutil

    root = shutil.copytree(synth_root, tmp_path / "k")
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    (cases[0] / f"{cases[0].name}_1.tif").write_bytes(b"not a tiff")
    (cases[1] / f"{cases[1].name}_2_mask.tif").unlink()
    r = run_cli("check", root)
    assert r.returncode == 1
    problems = [line for line in r.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2 and "Traceback" not in r.stderr
    assert f"{cases[0].name}_1.tif" in r.stderr and "no mask" in r.stderr


@pytest.mark.parametrize("verb", ["predict", "evaluate", "train", "split"])
def test_a_missing_input_path_fails_before_torch_is_imported(tmp_path, verb):
    """A typo'd path should not cost the seconds of importing torch."""
    argv = [verb, str(tmp_path / "nope"), "-o", str(tmp_path / "o")]
    code = ("import sys; from gliomaseg.cli import main; "
            f"code = main({argv!r}); print(code, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr
    assert r.stderr.strip() == f"gliomaseg {verb}: error: {tmp_path / 'nope'}: no such file or directory"


@pytest.mark.parametrize("target", ["missing", "empty"])
def test_bad_paths_give_one_line_and_exit_2(tmp_path, target):
    (tmp_path / "empty").mkdir()
    r = run_cli("check", tmp_path / target)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_split_writes_nnunet_shape_and_refuses_overwrite(synth_root, tmp_path):
    out = tmp_path / "splits.json"
    assert main(["split", str(synth_root), "--folds", "2", "--seed", "0", "-o", str(out)]) == 0
    folds = json.loads(out.read_text())
    assert len(folds) == 2 and all(set(f) == {"train", "val"} for f in folds)
    r = run_cli("split", synth_root, "--folds", "2", "-o", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_split_pair_of_writes_one_fold_without_two_folds(synth_root, tmp_path):
    outer, pair = tmp_path / "splits.json", tmp_path / "pair.json"
    assert main(["split", str(synth_root), "--folds", "4", "-o", str(outer)]) == 0
    args = ["split", str(synth_root), "--pair-of", str(outer), "--pair", "1", "3"]
    assert main([*args, "-o", str(pair)]) == 0
    folds = json.loads(outer.read_text())
    [fold] = json.loads(pair.read_text())
    assert sorted(fold["val"]) == sorted(folds[1]["val"] + folds[3]["val"])
    assert sorted(fold["train"]) == sorted(folds[0]["val"] + folds[2]["val"])
    unknown = {"val": ["TCGA_XX_0000_20000101"], "train": []}
    for text in (json.dumps([unknown] * 4), "[1, 2, 3, 4]", "{", "", "[]"):
        (tmp_path / "bad.json").write_text(text)
        r = run_cli(*args[:2], "--pair-of", tmp_path / "bad.json", "-o", tmp_path / "x.json")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "x.json").exists()


def test_split_output_inside_input_is_refused(synth_root):
    r = run_cli("split", synth_root, "--folds", "2", "-o", synth_root / "splits.json")
    assert r.returncode == 2 and "inside the input" in r.stderr
    assert not (synth_root / "splits.json").exists()


@pytest.mark.parametrize("verb", ["split", "synth", "train", "evaluate", "predict", "export"])
def test_an_output_below_a_file_gives_one_line_and_exit_2(synth_root, tmp_path, capsys, verb):
    (tmp_path / "afile").write_text("keep")
    out = str(tmp_path / "afile" / "sub" / "out")
    argv = {"split": [str(synth_root), "--folds", "2", "-o", out], "synth": [out],
            "export": ["-o", out]}.get(verb, [str(synth_root), "-o", out])
    assert main([verb, *argv]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gliomaseg {verb}: error: {tmp_path / 'afile' / 'sub' / 'out'}: "
        f"{tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("verb", ["split", "export", "train", "evaluate"])
def test_a_file_where_a_folder_goes_and_the_reverse_give_one_line(synth_root, tmp_path,
                                                                  capsys, verb):
    folder_output = verb in ("train", "evaluate")
    out = tmp_path / "taken"
    out.write_text("keep") if folder_output else out.mkdir()
    argv = {"split": [str(synth_root), "--folds", "2"], "export": []}.get(verb, [str(synth_root)])
    assert main([verb, *argv, "-o", str(out), "--overwrite"]) == 2
    kind = "is a file, not a folder" if folder_output else "is a folder, not a file"
    assert capsys.readouterr().err.strip() == f"gliomaseg {verb}: error: {out}: {kind}"
    assert out.read_text() == "keep" if folder_output else not any(out.iterdir())


def test_a_file_output_gets_its_folders_made(synth_root, tmp_path):
    out = tmp_path / "new" / "deeper" / "splits.json"
    assert main(["split", str(synth_root), "--folds", "2", "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 2


def test_an_output_folder_that_cannot_be_made_gives_one_line(tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    assert main(["synth", str(tmp_path / "ro" / "s")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gliomaseg synth: error: {tmp_path / 'ro' / 's'}: "
        f"cannot create the folder {tmp_path / 'ro'} (Permission denied)")


def test_synth_then_check(tmp_path):
    r = run_cli("synth", tmp_path / "s", "--cases", "2", "--slices", "5", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert main(["check", str(tmp_path / "s" / "kaggle_3m")]) == 0


def _fake_kagglehub(tmp_path, fail=None):
    def dataset_download(handle, output_dir=None):
        if fail:
            raise fail
        from gliomaseg.synth import write_dataset

        assert handle == "mateuszbuda/lgg-mri-segmentation"
        write_dataset(output_dir, cases=1, slices=3, size=32)
        return output_dir

    return types.SimpleNamespace(dataset_download=dataset_download)


def test_download_with_fake_kagglehub(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(tmp_path))
    assert main(["download", str(tmp_path / "d")]) == 0
    assert "kaggle_3m" in capsys.readouterr().out


def test_download_without_credentials_says_what_to_do(tmp_path, monkeypatch, capsys):
    fake = _fake_kagglehub(tmp_path, fail=RuntimeError("401 Unauthorized\nmore"))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    assert main(["download", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and "kaggle.json" in err and len(err.strip().splitlines()) == 1


def test_download_without_kagglehub_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import raises ImportError
    assert main(["download", str(tmp_path / "d")]) == 2
    assert "pip install" in capsys.readouterr().err


def test_channels_flag_selects_flair_only_input():
    from gliomaseg.cli import _overrides
    from gliomaseg.config import load_config

    args = build_parser().parse_args(["train", "d", "-o", "r", "--channels", "flair"])
    cfg = load_config(args.config, _overrides(args))
    assert cfg.data.channels == "flair" and cfg.data.in_channels == 2 * cfg.data.context + 1


def test_bundle_joins_runs_into_one_model_that_predicts(tiny_run, synth_root, tmp_path):
    post = tmp_path / "post.json"
    post.write_text('{"tta": true, "min_size": 3}')
    out = tmp_path / "ens.pt"
    r = run_cli("bundle", tiny_run, tiny_run / "best.pt", "-o", out, "--post", post)
    assert r.returncode == 0 and "ensemble of 2" in r.stdout, r.stderr
    r = run_cli("predict", synth_root / list_cases(synth_root)[0], "-o", tmp_path / "pred",
                "--model", out)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "pred").rglob("*_mask.tif"))


@pytest.mark.parametrize("extra,message", [
    ([], "already exists"),  # out exists from the first call
    (["--post", "nope.json"], "not a readable JSON"),
    (["--post", "BADPOST"], "unknown key"),
])
def test_bundle_refusals_are_one_line(tiny_run, tmp_path, capsys, extra, message):
    (tmp_path / "bad.json").write_text('{"tta": true, "typo": 1}')
    extra = [str(tmp_path / "bad.json") if e == "BADPOST" else e for e in extra]
    out = tmp_path / "m.pt"
    if message == "already exists":
        assert main(["bundle", str(tiny_run), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["bundle", str(tiny_run), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bundle_refuses_to_write_into_a_run_folder(tiny_run, capsys):
    assert main(["bundle", str(tiny_run), "-o", str(tiny_run / "model.pt")]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert not (tiny_run / "model.pt").exists()


def test_train_refuses_an_ensemble_from_scratch(synth_root, tmp_path, capsys):
    assert main(["train", str(synth_root), "-o", str(tmp_path / "r"),
                 "--set", "model.members=3"]) == 2
    assert "join them with 'gliomaseg bundle" in capsys.readouterr().err


def test_an_ensemble_fine_tunes_as_a_whole_and_resumes(tiny_run, synth_root, tmp_path):
    """--init with an ensemble trains all its networks on the mean logits; --resume works."""
    from conftest import TINY

    ens = tmp_path / "ens.pt"
    assert main(["bundle", str(tiny_run), str(tiny_run), "-o", str(ens)]) == 0
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(TINY.replace(train={"max_epochs": 1}).to_dict()))
    run = tmp_path / "ft"
    assert main(["train", str(synth_root), "-o", str(run), "--init", str(ens),
                 "--config", str(tiny), "--no-cache"]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["members"] == 2
    assert main(["train", "--resume", str(run), "--no-cache"]) == 0
