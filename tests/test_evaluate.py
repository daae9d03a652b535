"""evaluate: probabilities per TTA setting, variants, aggregation, gallery picks, the CLI verb."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from conftest import run_cli

from gliomaseg import metrics
from gliomaseg.checkpoint import bundle, load_checkpoint
from gliomaseg.cli import main
from gliomaseg.config import PostConfig
from gliomaseg.data import DataError, list_cases, pair_fold
from gliomaseg.evaluate import (
    NESTED,
    VARIANT_MIN_SIZE,
    Variant,
    aggregate,
    by_fold,
    chosen_post,
    cross_validate,
    evaluate,
    gallery_cases,
    gallery_slices,
    labelled_cases,
    load_for_evaluation,
    native_probabilities,
    nested_choice,
    paired_difference,
    post_grid,
    score_case,
    slice_level,
    standard_variants,
    variant_table,
)
from gliomaseg.inference import probabilities, to_native


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity (which are not JSON)."""
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


class CountingLogits:
    """A deterministic, left-right asymmetric 'network': logits = weighted channel sum + ramp."""

    def __init__(self):
        self.calls = 0
        self.slices = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.slices += x.shape[0]
        ramp = np.linspace(-1, 1, x.shape[-1], dtype=np.float32)
        return (x.mean(axis=1, keepdims=True) * 3 + ramp).astype(np.float32)


# --- probabilities -----------------------------------------------------------------------------


def test_both_tta_settings_cost_two_passes_and_match_inference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    fn = CountingLogits()
    both = native_probabilities(fn, x, (32, 32), {False, True}, batch_size=2)
    assert fn.slices == 2 * 5  # the plain pass is reused for TTA: 2 passes, not 3
    for tta in (False, True):
        expected = to_native(probabilities(CountingLogits(), x, 2, tta=tta), (32, 32))
        np.testing.assert_allclose(both[tta], expected, atol=1e-6)
        assert both[tta].shape == (5, 32, 32)
    assert not np.allclose(both[False], both[True])  # the ramp makes the flip matter


def test_mirroring_both_axes_costs_four_passes_and_matches_inference():
    x = np.random.default_rng(2).standard_normal((3, 2, 8, 8)).astype(np.float32)
    fn = CountingLogits()
    both = native_probabilities(fn, x, (8, 8), {False, True}, mirror="both")
    assert fn.slices == 4 * 3  # plain, left-right, up-down, both; the plain one reused
    np.testing.assert_allclose(both[False], probabilities(CountingLogits(), x))
    np.testing.assert_allclose(both[True], probabilities(CountingLogits(), x, tta=True,
                                                         mirror="both"), atol=1e-6)


def test_single_tta_setting_is_one_call_of_inference():
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    fn = CountingLogits()
    only = native_probabilities(fn, x, (8, 8), {True})
    assert set(only) == {True} and fn.slices == 2 * 3
    np.testing.assert_allclose(only[True], probabilities(CountingLogits(), x, tta=True))


# --- variants and per-case scoring -------------------------------------------------------------


def test_standard_variants_and_chosen_row():
    names = [v.name for v in standard_variants(PostConfig())]
    assert names == ["plain", "+TTA", "+largest component", "+largest by voxels",
                     f"+min size {VARIANT_MIN_SIZE}", "combined"]
    combined = standard_variants(PostConfig())[-1].post
    assert combined.tta and combined.largest_component and combined.min_size == VARIANT_MIN_SIZE
    assert combined.largest_by == "probability"
    by_voxels = standard_variants(PostConfig(largest_by="voxels"))
    assert by_voxels[3].name == "+largest by probability" and by_voxels[2].post.largest_by == "voxels"
    custom = PostConfig(threshold=0.4, fill_holes=True)
    variants = standard_variants(custom)
    assert variants[-1].name == "chosen" and variants[-1].post == custom
    assert all(v.post.threshold == 0.4 for v in variants)
    assert standard_variants(PostConfig(min_size=50))[4].name == "+min size 50"


def test_chosen_post_overrides_only_what_is_given():
    post = chosen_post(PostConfig(min_size=7, largest_component=False), tta=True,
                       largest_component=True)
    assert post.tta and post.largest_component and post.min_size == 7
    assert chosen_post(PostConfig(min_size=7), min_size=0).min_size == 0
    assert chosen_post(PostConfig(tta=True)).tta  # None keeps the model's setting
    assert chosen_post(PostConfig(), largest_by="voxels").largest_by == "voxels"
    assert chosen_post(PostConfig(largest_by="voxels")).largest_by == "voxels"
    off = chosen_post(PostConfig(tta=True), tta=False, largest_component=False)
    assert not off.tta and not off.largest_component  # --no-tta, --no-largest-component
    assert chosen_post(PostConfig(), fill_holes=True).fill_holes
    assert not chosen_post(PostConfig(fill_holes=True), fill_holes=False).fill_holes


PLAIN = PostConfig(largest_component=False)  # threshold only


def speck_case():
    """Truth: a 2x4x4 block (32 voxels). Prediction: the block plus a 1-voxel speck far away."""
    truth = np.zeros((3, 12, 12), np.uint8)
    truth[0:2, 2:6, 2:6] = 1
    probs = truth.astype(np.float32) * 0.9
    probs[2, 10, 10] = 0.8
    return truth, probs


def test_score_case_variants_by_hand():
    truth, probs = speck_case()
    variants = [v for v in standard_variants(PostConfig()) if not v.post.tta]
    r = score_case("P", truth, {False: probs}, PLAIN, variants)
    assert r.dice == pytest.approx(64 / 65)  # 2*32 / (2*32 + 1 false positive)
    assert r.variant_dice["plain"] == pytest.approx(64 / 65)
    assert r.variant_dice["+largest component"] == 1.0  # the speck is removed
    assert r.variant_dice[f"+min size {VARIANT_MIN_SIZE}"] == 0.0  # block < 200 voxels: gone
    assert r.scores["volume_true"] == 32 and r.scores["volume_pred"] == 33
    np.testing.assert_array_equal(r.mask(), (probs >= 0.5).astype(np.uint8))
    assert list(r.slices.fp) == [0, 0, 1]


def test_score_case_uses_the_chosen_post_processing_for_the_main_scores():
    truth, probs = speck_case()
    r = score_case("P", truth, {False: probs}, PostConfig(largest_component=True), [])
    assert r.dice == 1.0 and r.mask().sum() == 32 and r.variant_dice == {}


def make_results():
    """Three patients: perfect, half found, and one with empty truth and empty prediction."""
    results = []
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2, :2] = 1
    results.append(score_case("A", truth, {False: truth.astype(np.float32)}, PostConfig(), []))
    half = np.zeros_like(truth, dtype=np.float32)
    half[0, :2, :1] = 1
    results.append(score_case("B", truth, {False: half}, PostConfig(), []))
    empty = np.zeros_like(truth)
    results.append(score_case("C", empty, {False: empty.astype(np.float32)}, PostConfig(), []))
    return results


def test_aggregate_excludes_empty_empty_cases():
    a = aggregate(make_results())
    # A: Dice 1; B: 2*2/(2*2+0+2) = 2/3; C: both empty -> excluded, never scored 1.
    assert a["dice_n"] == 2 and a["cases"] == 3 and a["excluded_empty"] == ["C"]
    assert a["dice_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert a["dice_median"] == pytest.approx((1 + 2 / 3) / 2)
    assert a["iou_mean"] == pytest.approx((1 + 0.5) / 2)
    # pooled over 96 pixels: errors are B's 2 false negatives
    assert a["pixel_accuracy"] == pytest.approx(94 / 96)
    assert a["dice_global"] == pytest.approx(2 * 6 / (2 * 6 + 2))
    assert a["pixel_accuracy_n"] == 3  # always defined, so C counts here
    lo, hi = a["dice_ci95"]
    assert 2 / 3 <= lo <= hi <= 1.0


def test_slice_level_by_hand():
    s = slice_level(make_results())
    # slices: A0 (tumour, found), A1 empty, B0 (tumour, half found), B1 empty, C0, C1 empty
    assert s["slices"] == 6 and s["tumour_slices"] == 2
    assert s["detection"]["tp"] == 2 and s["detection"]["tn"] == 4
    assert s["detection"]["sensitivity"] == 1.0 and s["detection"]["specificity"] == 1.0
    assert s["dice"]["n"] == 2 and s["dice"]["mean"] == pytest.approx((1 + 2 / 3) / 2)


def test_variant_table_marks_the_chosen_row():
    truth, probs = speck_case()
    variants = [v for v in standard_variants(PostConfig()) if not v.post.tta]
    results = [score_case(c, truth, {False: probs}, PLAIN, variants) for c in "XY"]
    rows = variant_table(results, variants, PLAIN)
    assert [r["chosen"] for r in rows] == [True, False, False, False]
    assert rows[1]["dice_mean"] == 1.0 and rows[1]["largest_component"] is True
    assert [r["largest_by"] for r in rows[1:3]] == ["probability", "voxels"]
    assert rows[2]["dice_mean"] == 1.0  # the speck loses by either rule
    assert rows[0]["dice_median"] == pytest.approx(64 / 65) and rows[0]["n"] == 2


# --- gallery picks -----------------------------------------------------------------------------


def fake(case, dice):
    class R:
        pass
    r = R()
    r.case, r.dice = case, dice
    return r


def test_gallery_cases_best_median_worst_skip_nan_and_dedupe():
    results = [fake("a", 0.5), fake("b", 0.9), fake("c", math.nan), fake("d", 0.1),
               fake("e", 0.7)]
    picks = [(label, r.case) for label, r in gallery_cases(results)]
    assert picks == [("best", "b"), ("median", "a"), ("worst", "d")]
    assert [label for label, _ in gallery_cases([fake("a", 0.5)])] == ["best"]
    assert gallery_cases([fake("c", math.nan)]) == []


def test_gallery_slices_most_tumour_and_largest_error():
    c = metrics.Counts(tp=np.array([5, 30, 10, 0]), fp=np.array([0, 2, 40, 0]),
                       fn=np.array([1, 4, 0, 0]), tn=np.zeros(4, int))
    assert gallery_slices(c) == [("most tumour", 1), ("largest error", 2)]
    same = metrics.Counts(tp=np.array([5, 30]), fp=np.array([0, 9]), fn=np.array([1, 4]),
                          tn=np.zeros(2, int))
    assert gallery_slices(same) == [("most tumour", 1), ("largest error", 0)]
    perfect = metrics.Counts(tp=np.array([0, 7]), fp=np.zeros(2, int), fn=np.zeros(2, int),
                             tn=np.zeros(2, int))
    assert gallery_slices(perfect) == [("most tumour", 1)]
    no_tumour = metrics.Counts(tp=np.zeros(3, int), fp=np.array([0, 0, 3]), fn=np.zeros(3, int),
                               tn=np.zeros(3, int))
    assert gallery_slices(no_tumour) == [("most predicted", 2)]


# --- data checks -------------------------------------------------------------------------------


def test_labelled_cases_missing_mask_and_unknown_case(synth_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    case = list_cases(data)[0]
    assert labelled_cases(data, [case]) == [case]
    mask = sorted((data / case).glob("*_mask.tif"))[0]
    mask.unlink()
    with pytest.raises(DataError, match="evaluate needs a ground-truth mask"):
        labelled_cases(data)
    with pytest.raises(DataError, match="no patient folder NOPE"):
        labelled_cases(data, ["NOPE"])


# --- end to end --------------------------------------------------------------------------------


def test_plain_variant_reproduces_the_training_validation_score(synth_root, tiny_run):
    """Same probabilities and metric as train.validate: the validation patients' plain mean
    PV-DSC must equal the best validation PV-DSC stored in the checkpoint."""
    state = load_checkpoint(tiny_run / "best.pt")
    model = load_for_evaluation(tiny_run / "best.pt", fp32=False)
    ev = evaluate(synth_root, model.logits_fn, model.cfg, cases=state["val_cases"])
    rows = variant_table(ev.cases, ev.variants, ev.post)
    plain = next(r for r in rows if r["name"] == "plain")
    assert plain["dice_mean"] == pytest.approx(state["best_dice"], abs=1e-6)
    assert model.info["epoch"] == state["epoch"]
    assert model.val_cases == state["val_cases"]
    assert ev.settings["network_passes_per_slice"] == 2


def test_cli_evaluate_writes_outputs_and_refuses_to_overwrite(synth_root, tiny_checkpoint,
                                                              tmp_path):
    before = sorted(p.relative_to(synth_root) for p in synth_root.rglob("*"))
    case = list_cases(synth_root)[3]
    out = tmp_path / "eval"
    res = run_cli("evaluate", synth_root, "-o", out, "--model", tiny_checkpoint,
                  "--cases", case, "--no-variants", "--fill-holes")
    assert res.returncode == 0, res.stderr
    assert "mean PV-DSC" in res.stdout and "report.html" in res.stdout
    assert {p.name for p in out.iterdir()} == {"summary.json", "per_case.csv", "report.html"}
    summary = strict_json((out / "summary.json").read_text())
    assert [r["case"] for r in summary["per_case"]] == [case]
    assert summary["variants"] == [] and summary["timing"]["seconds"] > 0
    assert summary["config"]["network_passes_per_slice"] == 1
    assert summary["config"]["post"]["fill_holes"] is True  # the flag reached the scoring
    assert sorted(p.relative_to(synth_root) for p in synth_root.rglob("*")) == before

    again = run_cli("evaluate", synth_root, "-o", out, "--model", tiny_checkpoint)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr

    mirrored = run_cli("evaluate", synth_root, "-o", out, "--model", tiny_checkpoint, "--cases",
                       case, "--tta", "--tta-mirror", "both", "--no-variants", "--overwrite")
    assert mirrored.returncode == 0, mirrored.stderr
    summary = strict_json((out / "summary.json").read_text())
    assert summary["config"]["post"]["tta_mirror"] == "both"
    assert summary["config"]["network_passes_per_slice"] == 4


def test_cli_evaluate_bad_inputs_are_one_line_errors(synth_root, tiny_checkpoint, tmp_path,
                                                     capsys):
    """In-process (cli.main), so each case costs no interpreter start."""

    def run(*args):
        code = main(["evaluate", *map(str, args)])
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return code, err

    code, err = run(synth_root, "-o", synth_root / "out", "--model", tiny_checkpoint)
    assert code == 2 and "must not be inside the input" in err
    assert not (synth_root / "out").exists()

    data = tmp_path / "nomask"
    shutil.copytree(synth_root, data)
    for mask in (data / list_cases(data)[1]).glob("*_mask.tif"):
        mask.unlink()
    code, err = run(data, "-o", tmp_path / "o1", "--model", tiny_checkpoint)
    assert code == 2 and "evaluate needs a ground-truth mask" in err

    code, err = run(synth_root, "-o", tmp_path / "o2", "--model", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in err
    code, err = run(synth_root, "-o", tmp_path / "o3", "--model", tiny_checkpoint,
                    "--cases", "NOPE")
    assert code == 2 and "no patient folder NOPE" in err
    code, err = run(synth_root, "-o", tmp_path / "o4", "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
    assert not any((tmp_path / f"o{i}").exists() and any((tmp_path / f"o{i}").iterdir())
                   for i in range(1, 5))


@pytest.mark.real
def test_evaluate_real_patients(real_root, tiny_checkpoint):
    model = load_for_evaluation(tiny_checkpoint)
    ev = evaluate(real_root, model.logits_fn, model.cfg, variants=False)
    assert len(ev.cases) == len(list_cases(real_root))
    for r in ev.cases:
        assert r.shape[1:] == (256, 256)  # scored on the native grid, not the 64-pixel model grid
        assert 0.0 <= r.dice <= 1.0  # every real patient has tumour, so Dice is defined


def test_fp32_option_scores_exactly_the_masks_predict_returns(synth_root, tiny_checkpoint):
    from gliomaseg.inference import load_model

    case = list_cases(synth_root)[0]
    model = load_for_evaluation(tiny_checkpoint, fp32=True)
    ev = evaluate(synth_root, model.logits_fn, model.cfg, cases=[case], variants=False)
    predicted = load_model(tiny_checkpoint).predict(synth_root / case)
    np.testing.assert_array_equal(ev.cases[0].mask(), predicted.mask)
    assert model.info["precision"] == "fp32 (as predict)"


def test_by_site_groups_patients():
    from gliomaseg.evaluate import by_site

    results = make_results()
    results[0].site, results[1].site, results[2].site = "CS", "CS", "DU"
    sites = by_site(results)
    assert list(sites) == ["CS", "DU"]
    assert sites["CS"]["patients"] == 2 and sites["CS"]["n"] == 2
    assert sites["CS"]["dice_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert sites["DU"]["patients"] == 1 and sites["DU"]["n"] == 0  # only an empty-empty case
    assert math.isnan(sites["DU"]["dice_mean"])


def test_cli_evaluate_without_bundled_model_says_how_to_get_one(synth_root, tmp_path, capsys,
                                                                monkeypatch):
    from gliomaseg import inference

    monkeypatch.setattr(inference, "WEIGHTS_DIR", tmp_path / "no_weights")
    assert main(["evaluate", str(synth_root), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no bundled model" in err and "--model" in err and len(err.strip().splitlines()) == 1


# --- cross-validation --------------------------------------------------------------------------

def _fold_runs(tiny_run, tmp_path, vals: list[list[str]], trains=None, name="fold") -> list:
    """One run folder per fold: the tiny model, with its own patients in run.json."""
    runs = []
    for i, val in enumerate(vals):
        run = tmp_path / f"{name}{i}"
        run.mkdir()
        shutil.copy(tiny_run / "best.pt", run / "best.pt")
        train = trains[i] if trains else []
        (run / "run.json").write_text(json.dumps({"train": train, "val": val}))
        runs.append(run)
    return runs


def test_cross_validate_scores_each_patient_with_its_own_fold(synth_root, tiny_run, tmp_path):
    cases = list_cases(synth_root)
    runs = _fold_runs(tiny_run, tmp_path, [cases[2:], cases[:2]])
    models = [load_for_evaluation(r / "best.pt") for r in runs]
    post = [m.cfg.post for m in models]
    ev = cross_validate(synth_root, models, post, variants=False)
    assert [r.case for r in ev.cases] == cases[2:] + cases[:2]
    alone = evaluate(synth_root, models[1].logits_fn, models[1].cfg, cases=cases[:2],
                     variants=False)
    assert [r.dice for r in ev.cases[2:]] == [r.dice for r in alone.cases]
    rows = by_fold(ev.cases, ev.folds)
    assert [(r["fold"], r["patients"], r["model"]) for r in rows] == [
        (0, 2, str(runs[0] / "best.pt")), (1, 2, str(runs[1] / "best.pt"))]
    assert rows[1]["dice_mean"] == pytest.approx(np.nanmean([r.dice for r in alone.cases]))


def test_cross_validate_refuses_overlap_missing_folds_and_mixed_post(synth_root, tiny_run,
                                                                     tmp_path):
    cases = list_cases(synth_root)
    runs = _fold_runs(tiny_run, tmp_path, [cases[:2], cases[1:], []])
    models = [load_for_evaluation(r / "best.pt") for r in runs]
    post = models[0].cfg.post
    with pytest.raises(DataError, match=f"{cases[1]} is a validation patient of both"):
        cross_validate(synth_root, models[:2], [post, post])
    with pytest.raises(DataError, match="no held-out patients"):
        cross_validate(synth_root, [models[0], models[2]], [post, post])
    with pytest.raises(DataError, match="disagree on post-processing"):
        cross_validate(synth_root, models[:2], [post, PostConfig(tta=not post.tta)])


def test_cross_validate_scores_each_bundle_on_the_patients_none_of_its_networks_trained_on(
        synth_root, tiny_run, tmp_path):
    # `make nested` with four one-patient folds: outer fold k bundles the networks of the
    # pairs (j, k), each trained without folds j and k and validated on both.
    cases = list_cases(synth_root)
    folds = [{"val": [c]} for c in cases]
    outer = []
    for k in (0, 1):
        pairs = [pair_fold(folds, (j, k)) for j in range(4) if j != k]
        runs = _fold_runs(tiny_run, tmp_path, [p["val"] for p in pairs],
                          [p["train"] for p in pairs], name=f"outer{k}-")
        bundle([r / "best.pt" for r in runs], tmp_path / f"outer{k}.pt", fp16=False)
        outer.append(load_for_evaluation(tmp_path / f"outer{k}.pt"))
    assert [m.held_out for m in outer] == [cases[:1], cases[1:2]]
    ev = cross_validate(synth_root, outer, [PostConfig()] * 2, variants=False, nested=True)
    assert [r.case for r in ev.cases] == cases[:2]
    assert [f["cases"] for f in ev.folds] == [cases[:1], cases[1:2]]
    with pytest.raises(DataError, match="at least two folds"):
        cross_validate(synth_root, outer[:1], [PostConfig()], nested=True)

    # The shipped structure: every patient trained some network, so none is held out.
    runs = _fold_runs(tiny_run, tmp_path, [[c] for c in cases],
                      [[c for c in cases if c != v] for v in cases], name="shipped")
    bundle([r / "best.pt" for r in runs], tmp_path / "shipped.pt", fp16=False)
    shipped = load_for_evaluation(tmp_path / "shipped.pt")
    assert shipped.held_out == [] and shipped.val_cases == sorted(cases)
    with pytest.raises(DataError, match="no held-out patients"):
        cross_validate(synth_root, [outer[0], shipped], [PostConfig()] * 2)


def test_cli_evaluate_cv_writes_the_fold_table(synth_root, tiny_run, tmp_path):
    cases = list_cases(synth_root)
    runs = _fold_runs(tiny_run, tmp_path, [cases[:1], cases[1:]])
    out = tmp_path / "cv"
    res = run_cli("evaluate", synth_root, "-o", out, "--cv", *runs, "--no-variants")
    assert res.returncode == 0, res.stderr
    assert "fold 0: 1 patients" in res.stdout and "fold 1: 3 patients" in res.stdout
    summary = strict_json((out / "summary.json").read_text())
    assert [f["patients"] for f in summary["folds"]] == [1, 3]
    assert sorted(r["case"] for r in summary["per_case"]) == sorted(cases)
    assert {r["case"]: r["fold"] for r in summary["per_case"]} == {
        c: int(c not in cases[:1]) for c in cases}
    assert f"{cases[0]},{summary['per_case'][0]['site']},0," in (out / "per_case.csv").read_text()
    assert summary["model"] == {}  # no single model: no "not a held-out test" warning
    page = (out / "report.html").read_text()
    assert "Cross-validation folds" in page and "Not a held-out test" not in page

    bad = run_cli("evaluate", synth_root, "-o", tmp_path / "bad", "--cv", *runs,
                  "--model", runs[0] / "best.pt")
    assert bad.returncode == 2 and "one network per fold" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_cli_evaluate_cv_members_cross_validates_an_ensemble_file(synth_root, tiny_run,
                                                                  tmp_path):
    cases = list_cases(synth_root)
    runs = _fold_runs(tiny_run, tmp_path, [cases[:1], cases[1:]])
    bundle([r / "best.pt" for r in runs], tmp_path / "ens.pt", fp16=False)
    by_runs = run_cli("evaluate", synth_root, "-o", tmp_path / "runs", "--cv", *runs,
                      "--no-variants")
    by_file = run_cli("evaluate", synth_root, "-o", tmp_path / "file", "--cv-members",
                      tmp_path / "ens.pt", "--no-variants")
    assert by_runs.returncode == by_file.returncode == 0, by_file.stderr
    assert "fold 0: 1 patients" in by_file.stdout and "(network 1)" in by_file.stdout
    a, b = (strict_json((tmp_path / d / "summary.json").read_text()) for d in ("runs", "file"))
    assert [(r["case"], r["fold"], r["dice"]) for r in b["per_case"]] == [
        (r["case"], r["fold"], r["dice"]) for r in a["per_case"]]

    for extra, message in (([tmp_path / "ens.pt", "--cv", *runs], "pass one"),
                           ([runs[0] / "best.pt"], "not an ensemble"),
                           ([tmp_path / "nope.pt"], "no such model file")):
        bad = run_cli("evaluate", synth_root, "-o", tmp_path / "bad", "--cv-members", *extra)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_post_grid_is_every_combination_once_simplest_first():
    grid = post_grid(PostConfig(min_size=0))
    assert len(grid) == 48
    assert len({v.name for v in grid}) == 48 and len({v.post for v in grid}) == 48
    assert grid[0].name == "t0.3" and grid[0].post == PostConfig(
        threshold=0.3, tta=False, largest_component=False, min_size=0, fill_holes=False)
    assert {v.post.threshold for v in grid} == {0.3, 0.4, 0.5, 0.6}
    assert {v.post.min_size for v in grid} == {0, VARIANT_MIN_SIZE}
    bundled = PostConfig(tta=True, largest_component=True, largest_by="probability",
                         min_size=VARIANT_MIN_SIZE, fill_holes=False)
    assert [v.name for v in grid if v.post == bundled] == [
        f"t0.5 +TTA +largest by probability +min size {VARIANT_MIN_SIZE}"]
    assert {v.post.min_size for v in post_grid(PostConfig(min_size=50))} == {0, 50}


def _scored(case: str, **dice: float):
    class R:
        pass
    r = R()
    r.case, r.variant_dice = case, dict(dice)
    return r


def test_nested_choice_chooses_on_the_other_folds_only():
    a, b, c = (Variant(n, PostConfig(threshold=t)) for n, t in (("a", 0.5), ("b", 0.4),
                                                                 ("c", 0.3)))
    results = [_scored("p0", a=0.9, b=0.1, c=0.1),  # fold 0 prefers a, the others b
               _scored("p1", a=0.5, b=0.7, c=0.7),
               _scored("p2", a=0.6, b=0.8, c=0.8),  # b and c tie: the earlier one wins
               _scored("p3", a=0.0, b=math.nan, c=math.nan)]  # no tumour: a's false positives
    folds = [{"cases": ["p0"]}, {"cases": ["p1", "p2"]}, {"cases": ["p3"]}]
    n = nested_choice(results, folds, [a, b, c])
    assert [f["choice"] for f in n["folds"]] == ["b", "a", "a"]
    # fold 0 chooses on p1-p3: a (0.5 + 0.6 + 0) / 3 loses to b and c, (0.7 + 0.8) / 2 each
    assert n["folds"][0]["inner_mean"] == pytest.approx(0.75)
    assert n["folds"][1]["inner_mean"] == pytest.approx(0.45)  # a on p0 and p3
    assert [f["dice_mean"] for f in n["folds"]] == pytest.approx([0.1, 0.55, 0.0])
    assert n["cases"] == {"p0": 0.1, "p1": 0.5, "p2": 0.6, "p3": 0.0}
    assert n["dice"]["mean"] == pytest.approx(1.2 / 4)
    assert n["candidates"] == 3 and n["folds"][0]["post"]["threshold"] == 0.4
    # Choosing on all four patients picks b (0.533 against a's 0.5) and reports 0.533.
    assert n["dice"]["mean"] < np.mean([0.1, 0.7, 0.8])


def test_cli_evaluate_nested_post(synth_root, tiny_run, tmp_path):
    cases = list_cases(synth_root)
    runs = _fold_runs(tiny_run, tmp_path, [cases[:2], cases[2:]])
    out = tmp_path / "nested"
    res = run_cli("evaluate", synth_root, "-o", out, "--cv", *runs, "--nested-post")
    assert res.returncode == 0, res.stderr
    assert "nested choice of post-processing: mean PV-DSC" in res.stdout
    summary = strict_json((out / "summary.json").read_text())
    nested = summary["nested_post"]
    assert nested["candidates"] == 48 and [f["patients"] for f in nested["folds"]] == [2, 2]
    for row in summary["per_case"]:  # each patient scored with its own fold's choice
        choice = nested["folds"][row["fold"]]["choice"]
        assert row["variants"][NESTED] == row["variants"][choice]
    dice = [row["variants"][NESTED] for row in summary["per_case"]]
    assert nested["dice"]["mean"] == pytest.approx(np.nanmean(
        [d if d is not None else math.nan for d in dice]))
    assert "Post-processing chosen by nested cross-validation" in (out / "report.html").read_text()

    bad = run_cli("evaluate", synth_root, "-o", tmp_path / "bad", "--nested-post",
                  "--model", runs[0] / "best.pt")
    assert bad.returncode == 2 and "--nested-post" in bad.stderr and "--cv" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_paired_difference_counts_wins_and_skips_empty_cases():
    a = {"p1": 0.5, "p2": 0.8, "p3": math.nan, "p4": 0.6, "only_a": 0.1}
    b = {"p1": 0.7, "p2": 0.7, "p3": 0.9, "p4": 0.9}
    r = paired_difference(a, b)
    assert r["patients"] == 3  # p3 is empty for A, only_a is not in B
    assert r["a_mean"] == pytest.approx((0.5 + 0.8 + 0.6) / 3)
    assert r["difference"]["mean"] == pytest.approx((0.2 - 0.1 + 0.3) / 3)
    assert (r["b_better"], r["a_better"]) == (2, 1)
    assert r["difference"]["ci95"][0] <= r["difference"]["mean"] <= r["difference"]["ci95"][1]
    assert r["cases"] == ["p1", "p2", "p4"]
    assert (r["largest_loss"], r["largest_gain"]) == ("p2", "p4")
    assert paired_difference(a, a)["largest_gain"] is None  # no change: neither


def test_cli_compare_reads_two_evaluations(tmp_path, capsys):
    def write(folder, dice, plain, precision):
        folder.mkdir()
        rows = [{"case": f"p{i}", "dice": d, "variants": {"plain": q}, "precision": p,
                 "recall": 0.9}
                for i, (d, q, p) in enumerate(zip(dice, plain, precision, strict=True))]
        (folder / "summary.json").write_text(json.dumps({"per_case": rows}))

    write(tmp_path / "a", [0.5, 0.6, None], [0.4, 0.5, None], [0.6, None, None])
    write(tmp_path / "b", [0.7, 0.9, 0.8], [0.7, 0.5, 0.8], [0.8, 0.6, 0.1])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "2 patients in both" in out and "mean +0.2500" in out and "B better on 2" in out
    assert "largest gain: p1 0.600 -> 0.900" in out and "largest loss" not in out
    # over the two paired patients only (not p2), each side's missing precision left out
    assert "mean precision: A 0.600, B 0.700" in out and "mean recall: A 0.900, B 0.900" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--variant", "plain"]) == 0
    out = capsys.readouterr().out
    assert "largest loss" not in out and "precision" not in out  # p1 is a tie, not a loss
    assert "largest gain: p0 0.400 -> 0.700" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--variant",
                 "plain", "dice_unused"]) == 2
    assert "no variant 'dice_unused'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
    assert "not a gliomaseg evaluation" in capsys.readouterr().err
