"""Score a model on labelled patients: PV-DSC and friends, post-processing variants, timing.

Per patient: read image and mask -> `prepare_volume` -> network probabilities on the
native grid, computed once per TTA setting (the plain pass is shared with the flipped
one) -> for every post-processing variant, `inference.postprocess` + `metrics` counts.
Only the chosen settings get the full metric set (HD95 is the slow one); the other
variants get PV-DSC, which is what the variants table compares. Nothing here writes
files: `report` turns an `Evaluation` into summary.json, per_case.csv and report.html.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .checkpoint import CheckpointError, load_checkpoint, member_states, model_from_checkpoint
from .config import Config, PostConfig
from .data import DataError, find_patients, iter_patients, list_slices
from .inference import (
    MIRRORS,
    LogitsFn,
    bundled_model_path,
    load_model,
    mirrored_logits,
    postprocess,
    probabilities,
    read_onnx_metadata,
    sigmoid,
    to_native,
    torch_logits_fn,
    use_bf16,
)
from .nifti import find_labels, is_nifti, read_nifti
from .preprocess import prepare_volume

# "+min size" variant when the model's config sets none: about 1% of a median tumour and
# a tenth of the smallest one among the 81 development patients (2,059 voxels), so it
# removes specks without being able to delete a whole real tumour.
VARIANT_MIN_SIZE = 200  # voxels
# Thresholds of the nested choice's grid: the sigmoid's midpoint and its neighbours. The
# networks under-segment more often than they over-segment (MODEL.md), so two lie below.
GRID_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
NESTED = "nested choice"  # the per-case variant name of the nested choice's scores
SCORES = ("dice", "iou", "precision", "recall", "pixel_accuracy", "hd95", "abs_volume_diff")


@dataclass(frozen=True)
class Variant:
    name: str
    post: PostConfig


@dataclass
class CaseResult:
    """One patient scored with the chosen post-processing (plus PV-DSC of every variant)."""

    case: str
    site: str
    folder: Path
    scores: dict  # metrics.case_metrics of the chosen post-processing
    slices: metrics.Counts  # per-slice counts, (S,) arrays
    variant_dice: dict[str, float]
    pred_bits: np.ndarray  # np.packbits of the chosen (S, H, W) mask, for the gallery
    shape: tuple[int, int, int]
    seconds: float  # preprocessing + network + post-processing + metrics
    labels: Path | None = None  # a NIfTI case: its label file (`folder` is then the image file)

    @property
    def dice(self) -> float:
        return self.scores["dice"]

    def mask(self) -> np.ndarray:
        """The chosen prediction (S, H, W) uint8 {0, 1}."""
        flat = np.unpackbits(self.pred_bits, count=math.prod(self.shape))
        return flat.reshape(self.shape)


@dataclass
class Evaluation:
    data: Path
    cfg: Config
    post: PostConfig  # the chosen post-processing (per-case results and aggregate)
    variants: list[Variant]
    cases: list[CaseResult]
    seconds: float
    settings: dict = field(default_factory=dict)  # batch size, precision, threads
    folds: list[dict] = field(default_factory=list)  # cross-validation: model and cases per fold
    nested: dict | None = None  # cross-validation: `nested_choice` of the post-processing
    hd95_unit: str = "voxels"  # "mm" when the input says its voxel size (NIfTI)


def standard_variants(post: PostConfig) -> list[Variant]:
    """plain, +TTA, +largest component (both rules), +min size, combined; plus `post` if different.

    All share `post`'s threshold, so the table isolates the effect of each option.
    """
    plain = PostConfig(threshold=post.threshold, tta=False, largest_component=False, min_size=0,
                       fill_holes=False, largest_by=post.largest_by, tta_mirror=post.tta_mirror)
    other = "voxels" if post.largest_by == "probability" else "probability"
    size = post.min_size or VARIANT_MIN_SIZE
    variants = [
        Variant("plain", plain),
        Variant("+TTA", replace(plain, tta=True)),
        Variant("+largest component", replace(plain, largest_component=True)),
        Variant(f"+largest by {other}", replace(plain, largest_component=True, largest_by=other)),
        Variant(f"+min size {size}", replace(plain, min_size=size)),
        Variant("combined", replace(plain, tta=True, largest_component=True, min_size=size)),
    ]
    if all(v.post != post for v in variants):
        variants.append(Variant("chosen", post))
    return variants


def post_grid(post: PostConfig, thresholds: tuple[float, ...] = GRID_THRESHOLDS,
              ) -> list[Variant]:
    """Every threshold x flip TTA x component rule x min size: the nested choice's candidates.

    Component rules: none, largest by probability, largest by voxels; min size: 0 or
    `post.min_size` (VARIANT_MIN_SIZE if it is 0). 4 x 2 x 3 x 2 = 48 candidates, listed
    simplest first, so a tie goes to fewer operations.
    """
    size = post.min_size or VARIANT_MIN_SIZE
    rules = [(False, post.largest_by), (True, "probability"), (True, "voxels")]
    grid = []
    for tta, (largest, by), min_size, threshold in itertools.product(
            (False, True), rules, (0, size), thresholds):
        p = PostConfig(threshold=threshold, tta=tta, largest_component=largest, largest_by=by,
                       min_size=min_size, fill_holes=False, tta_mirror=post.tta_mirror)
        name = " ".join([f"t{threshold:g}"] + (["+TTA"] if tta else [])
                        + ([f"+largest by {by}"] if largest else [])
                        + ([f"+min size {min_size}"] if min_size else []))
        grid.append(Variant(name, p))
    return grid


def nested_choice(results: list[CaseResult], folds: list[dict], candidates: list[Variant],
                  seed: int = 0) -> dict:
    """Choose each fold's post-processing on the other folds' patients; score it on its own.

    For fold i, the candidate with the best mean PV-DSC over the patients of the other
    folds (each scored by its own fold's network) is applied to fold i's patients. No
    patient's score then depends on a choice made with its own ground truth, so the
    pooled scores estimate the whole recipe, choice included, where choosing on all
    patients and reporting on them would be optimistic. What remains: the other folds'
    networks trained on fold i's patients, an indirect influence that every choice on
    out-of-fold predictions shares. Ties go to the earlier candidate.

    Returns {"candidates": n, "folds": [{"fold", "choice", "inner_mean", "dice_mean",
    "patients"}], "dice": summarize() of the pooled scores, "cases": {case: PV-DSC}}.
    """
    dice = {r.case: r.variant_dice for r in results}
    rows, scores = [], {}
    for i, fold in enumerate(folds):
        others = [c for j, f in enumerate(folds) if j != i for c in f["cases"]]
        inner = [mean_defined([dice[c][v.name] for c in others]) for v in candidates]
        best = max(range(len(candidates)),
                   key=lambda k: -math.inf if math.isnan(inner[k]) else inner[k])
        chosen = candidates[best]
        scores.update({c: dice[c][chosen.name] for c in fold["cases"]})
        rows.append({"fold": i, "choice": chosen.name, "post": asdict(chosen.post),
                     "inner_mean": inner[best], "patients": len(fold["cases"]),
                     "dice_mean": mean_defined([dice[c][chosen.name] for c in fold["cases"]])})
    return {"candidates": len(candidates), "folds": rows, "cases": scores,
            "dice": metrics.summarize(list(scores.values()), np.random.default_rng(seed))}


def mean_defined(values: list[float]) -> float:
    """Mean ignoring NaN (cases where truth and prediction are both empty); NaN if none."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def native_probabilities(logits_fn: LogitsFn, x: np.ndarray, native_shape: tuple[int, int],
                         tta_settings: set[bool], batch_size: int = 16,
                         mirror: str = "left-right") -> dict[bool, np.ndarray]:
    """{tta: probabilities (S, H, W) on the native grid} for each requested TTA setting.

    With both settings the network runs once per flip of MIRRORS[mirror] (the identity
    included), not once more for the plain setting: its logits are reused in the TTA
    average. A test checks that this equals `inference.probabilities(..., tta=True)`.
    """
    if len(tta_settings) == 1:
        tta = next(iter(tta_settings))
        return {tta: to_native(probabilities(logits_fn, x, batch_size, tta=tta, mirror=mirror),
                               native_shape)}
    logits = mirrored_logits(logits_fn, x, batch_size, mirror)
    return {False: to_native(sigmoid(logits[0]), native_shape),
            True: to_native(sigmoid(np.mean(logits, axis=0)), native_shape)}


def score_case(case: str, truth: np.ndarray, probs: dict[bool, np.ndarray], post: PostConfig,
               variants: list[Variant], site: str = "unknown", folder: Path = Path(),
               spacing: tuple[float, float, float] | None = None) -> CaseResult:
    """Score one patient from its probabilities; truth (S, H, W) {0, 1} on the native grid.

    spacing: voxel size in mm (slice, row, column) when known; HD95 is then in mm.

    Each distinct post-processing is run once (variants often coincide with `post`).
    """
    masks: dict[PostConfig, np.ndarray] = {}

    def mask_for(p: PostConfig) -> np.ndarray:
        if p not in masks:
            with warnings.catch_warnings():  # scikit-image >= 0.26 deprecates what MONAI passes
                warnings.simplefilter("ignore", FutureWarning)
                masks[p] = postprocess(probs[p.tta], p)
        return masks[p]

    pred = mask_for(post)
    variant_dice = {v.name: metrics.dice(metrics.confusion(mask_for(v.post), truth))
                    for v in variants}
    return CaseResult(case=case, site=site, folder=folder,
                      scores=metrics.case_metrics(pred, truth, spacing=spacing),
                      slices=metrics.slice_confusion(pred, truth), variant_dice=variant_dice,
                      pred_bits=np.packbits(pred.astype(bool)), shape=tuple(pred.shape),
                      seconds=0.0)  # set by `evaluate`, which sees the whole per-patient work


def labelled_cases(data: Path, cases: list[str] | None = None) -> list[str]:
    """Patient names to evaluate; a clear DataError (before any work) if one lacks masks."""
    folders = {f.name: f for f in find_patients(data)}
    names = list(cases) if cases else list(folders)
    for name in names:
        if name not in folders:
            raise DataError(f"{data}: no patient folder {name}")
        _, images, masks = list_slices(folders[name])
        missing = [img for img, m in zip(images, masks, strict=True) if m is None]
        if missing:
            raise DataError(f"{missing[0]}: no mask ({missing[0].stem}_mask.tif); evaluate needs "
                            f"a ground-truth mask for every slice ({len(missing)} of "
                            f"{len(images)} missing in {name})")
    return names


def evaluate(data: Path, logits_fn: LogitsFn, cfg: Config, post: PostConfig | None = None,
             cases: list[str] | None = None, variants: bool = True, batch_size: int = 16,
             progress: bool = False, settings: dict | None = None,
             labels: Path | None = None, candidates: list[Variant] | None = None) -> Evaluation:
    """Run the model over the labelled patients under `data` and score them.

    data: a kaggle_3m root or patient folder, or a NIfTI image (.nii/.nii.gz) whose labels
    are `labels` or a file beside it (`nifti.find_labels`); any label > 0 is tumour.
    post: the chosen post-processing (default: the model's cfg.post). With `variants`,
    the standard variants table is computed too, at the cost of a second (flipped)
    network pass when `post` has no TTA. `candidates`: more post-processings whose
    PV-DSC each case records (`variant_dice`) outside the table, e.g. `post_grid`.
    """
    post = post or cfg.post
    nifti_input = is_nifti(data)
    if labels is not None and not nifti_input:
        raise DataError(f"{data}: --labels is for a NIfTI image; patient folders hold their "
                        "masks as <case>_<n>_mask.tif")
    if nifti_input:
        if cases:
            raise DataError(f"{data}: --cases selects patient folders; a NIfTI file is one case")
        labels = Path(labels) if labels is not None else find_labels(Path(data))
        volume = read_nifti(data, labels=labels)  # read now: fails before any work
        patients, names = [volume.patient], [volume.patient.case]
        rows, cols, step = volume.spacing
        spacing = (step, rows, cols)  # the (S, H, W) order of the masks
    else:
        names = labelled_cases(data, cases)
        patients = iter_patients(data, require_masks=True, cases=names)
        spacing = None  # kaggle_3m slices carry no voxel size
    variant_list = standard_variants(post) if variants else []
    scored = variant_list + list(candidates or [])
    if any(v.post.tta_mirror != post.tta_mirror for v in scored):
        raise ValueError("variants must share post.tta_mirror: their probabilities are shared")
    tta_settings = {post.tta} | {v.post.tta for v in scored}
    results, start = [], time.perf_counter()
    for patient in tqdm(patients, total=len(names), desc="evaluate", unit="patient",
                        disable=None if progress else True, leave=False):  # None: TTY only
        t0 = time.perf_counter()
        x = prepare_volume(patient.image, cfg.data)
        probs = native_probabilities(logits_fn, x, patient.mask.shape[1:], tta_settings,
                                     batch_size, mirror=post.tta_mirror)
        result = score_case(patient.case, patient.mask, probs, post, scored,
                            site=patient.site, folder=Path(data) if nifti_input
                            else patient.image_paths[0].parent, spacing=spacing)
        result.labels = labels if nifti_input else None
        result.seconds = time.perf_counter() - t0
        results.append(result)
    settings = {"batch_size": batch_size, "threads": torch.get_num_threads(),
                "network_passes_per_slice":
                    len(MIRRORS[post.tta_mirror]) if True in tta_settings else 1,
                **(settings or {})}
    return Evaluation(data=Path(data), cfg=cfg, post=post, variants=variant_list, cases=results,
                      seconds=time.perf_counter() - start, settings=settings,
                      hd95_unit="voxels" if spacing is None else "mm")


def cross_validate(data: Path, models: list[LoadedModel], post: list[PostConfig],
                   variants: bool = True, batch_size: int = 16, progress: bool = False,
                   settings: dict | None = None, nested: bool = False) -> Evaluation:
    """Score each fold's model on its held-out patients (its run.json) and pool them.

    The pooled per-patient scores are the cross-validation estimate: every patient is
    scored by the one model that never trained on it, and a fold mean of 16 patients is
    too noisy to judge a recipe alone. `post[i]` is fold i's post-processing; the folds
    of one recipe must agree on it, so the pooled variants table compares like with like.
    `nested`: also score the `post_grid` candidates and choose each fold's post-processing
    on the other folds (`nested_choice`); each case records that score as variant NESTED.
    """
    if len(set(post)) > 1:
        raise DataError("the fold models disagree on post-processing; pass --tta/"
                        "--largest-component/--min-size to set it for all of them")
    if nested and len(models) < 2:
        raise DataError("--nested-post chooses each fold's post-processing on the other folds: "
                        "it needs at least two folds")
    seen: dict[str, str] = {}
    for m in models:
        path = m.info["path"]
        if not m.held_out:
            raise DataError(f"{path}: no held-out patients (neither a run.json beside it from "
                            "'gliomaseg train' nor, in a bundle, validation patients that none "
                            "of its networks trained on); cross-validation needs one per fold")
        for case in m.held_out:
            if case in seen:
                raise DataError(f"{case} is a validation patient of both {seen[case]} and "
                                f"{path}; folds must not overlap")
            seen[case] = path
    grid = post_grid(post[0]) if nested else []
    parts = [evaluate(data, m.logits_fn, m.cfg, post=post[0], cases=m.held_out,
                      variants=variants, batch_size=batch_size, progress=progress,
                      settings=settings, candidates=grid) for m in models]
    results = [r for ev in parts for r in ev.cases]
    folds = [{"model": m.info["path"], "cases": m.held_out} for m in models]
    choice = nested_choice(results, folds, grid) if nested else None
    if choice is not None:
        scores = choice.pop("cases")  # kept in each case's variant_dice, not twice
        for r in results:
            r.variant_dice[NESTED] = scores[r.case]
    return replace(parts[0], cases=results, seconds=sum(ev.seconds for ev in parts),
                   folds=folds, nested=choice)


def by_fold(results: list[CaseResult], folds: list[dict]) -> list[dict]:
    """PV-DSC and IoU mean/median/n per cross-validation fold, in fold order."""
    scores = {r.case: r.scores for r in results}
    rows = []
    for i, fold in enumerate(folds):
        dice = metrics.summarize([scores[c]["dice"] for c in fold["cases"]])
        iou = metrics.summarize([scores[c]["iou"] for c in fold["cases"]])
        rows.append({"fold": i, "model": fold["model"], "patients": len(fold["cases"]),
                     "dice_mean": dice["mean"], "dice_median": dice["median"],
                     "dice_n": dice["n"], "dice_ci95": dice["ci95"], "iou_mean": iou["mean"]})
    return rows


# --- aggregation (pure) ------------------------------------------------------------------------

def aggregate(results: list[CaseResult], seed: int = 0) -> dict:
    """Per-patient scores summarised: <score>_mean/_median/_std/_n/_ci95 for each score.

    Plus pixel_accuracy and dice_global pooled over every pixel of every patient, and
    the patients excluded from the means because truth and prediction were both empty.
    Each score gets its own seeded generator, so its CI does not depend on the others.
    """
    out: dict = {"cases": len(results)}
    for name in SCORES:
        stats = metrics.summarize([r.scores[name] for r in results], np.random.default_rng(seed))
        out.update({f"{name}_{key}": value for key, value in stats.items()})
    pooled = sum((r.slices.total() for r in results), metrics.Counts(0, 0, 0, 0))
    out["pixel_accuracy"] = metrics.pixel_accuracy(pooled)
    out["dice_global"] = metrics.dice(pooled)
    out["excluded_empty"] = [r.case for r in results if math.isnan(r.dice)]
    return out


def _concat(results: list[CaseResult]) -> metrics.Counts:
    parts = [r.slices for r in results]
    return metrics.Counts(*(np.concatenate([getattr(c, k) for c in parts]) if parts
                            else np.zeros(0, np.int64) for k in ("tp", "fp", "fn", "tn")))


def slice_level(results: list[CaseResult]) -> dict:
    """Per-slice Dice/IoU over all slices of all patients, and slice-level detection.

    Slices where truth and prediction are both empty are excluded (NaN); a prediction
    on a tumour-free slice scores 0 and counts. No CI here: slices of one patient are
    not independent, so a slice bootstrap would be too narrow.
    """
    counts = _concat(results)
    out = {"slices": int(counts.tp.size), "tumour_slices": int(np.count_nonzero(counts.tp
                                                                                + counts.fn))}
    for name, score in (("dice", metrics.dice), ("iou", metrics.iou)):
        stats = metrics.summarize(np.atleast_1d(score(counts)).tolist())
        out[name] = {k: v for k, v in stats.items() if k != "ci95"}
    out["detection"] = metrics.detection_scores(metrics.slice_detection(counts))
    return out


def by_site(results: list[CaseResult]) -> dict[str, dict]:
    """PV-DSC mean/median/n per acquisition site (the second field of a TCGA case id).

    Sites differ in scanners and protocols, so a model can be good on one and poor on
    another; the overall mean hides that.
    """
    sites = sorted({r.site for r in results})
    out = {}
    for site in sites:
        stats = metrics.summarize([r.dice for r in results if r.site == site])
        out[site] = {"patients": sum(r.site == site for r in results), "dice_mean": stats["mean"],
                     "dice_median": stats["median"], "n": stats["n"]}
    return out


def variant_table(results: list[CaseResult], variants: list[Variant], chosen: PostConfig,
                  ) -> list[dict]:
    """One row per variant: its settings and mean/median PV-DSC over patients."""
    rows = []
    for v in variants:
        stats = metrics.summarize([r.variant_dice[v.name] for r in results])
        rows.append({"name": v.name, "tta": v.post.tta,
                     "largest_component": v.post.largest_component,
                     "largest_by": v.post.largest_by,
                     "min_size": v.post.min_size, "fill_holes": v.post.fill_holes,
                     "threshold": v.post.threshold, "dice_mean": stats["mean"],
                     "dice_median": stats["median"], "n": stats["n"],
                     "chosen": v.post == chosen})
    return rows


def paired_difference(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict:
    """Per-patient PV-DSC of B minus A, over the patients both scored.

    Both models met the same patients, so the CI of the mean *difference* is what says
    whether B is better; two overlapping CIs of means cannot. Patients where either
    score is NaN (truth and prediction empty) are left out. Returns the patient count and
    names, both means, summarize() of the differences, how often each side won, and the patients
    with the largest loss and gain (most negative and most positive B - A; None if none).
    """
    common = [c for c in sorted(set(a) & set(b)) if not (math.isnan(a[c]) or math.isnan(b[c]))]
    diffs = np.array([b[c] - a[c] for c in common])
    return {"patients": len(common), "cases": common,
            "a_mean": float(np.mean([a[c] for c in common])) if common else math.nan,
            "b_mean": float(np.mean([b[c] for c in common])) if common else math.nan,
            "difference": metrics.summarize(diffs.tolist(), np.random.default_rng(seed)),
            "b_better": int((diffs > 0).sum()), "a_better": int((diffs < 0).sum()),
            "largest_loss": common[int(diffs.argmin())] if (diffs < 0).any() else None,
            "largest_gain": common[int(diffs.argmax())] if (diffs > 0).any() else None}


def gallery_cases(results: list[CaseResult]) -> list[tuple[str, CaseResult]]:
    """Best, median and worst patient by PV-DSC (patients with NaN Dice are skipped)."""
    scored = sorted((r for r in results if not math.isnan(r.dice)), key=lambda r: r.dice)
    if not scored:
        return []
    picks = [("best", scored[-1]), ("median", scored[(len(scored) - 1) // 2]),
             ("worst", scored[0])]
    seen: set[str] = set()
    return [(label, r) for label, r in picks if not (r.case in seen or seen.add(r.case))]


def gallery_slices(counts: metrics.Counts) -> list[tuple[str, int]]:
    """Slices worth showing: the most true tumour, and the largest error (FP + FN) if different.

    With no tumour anywhere, the slice with the most predicted tumour is shown instead.
    """
    area, error = counts.tp + counts.fn, counts.fp + counts.fn
    if area.max() > 0:
        first = ("most tumour", int(np.argmax(area)))
    else:
        first = ("most predicted", int(np.argmax(counts.tp + counts.fp)))
    picks = [first]
    for i in np.argsort(-error, kind="stable"):
        if error[i] == 0:
            break
        if i != first[1]:
            picks.append(("largest error", int(i)))
            break
    return picks


# --- model loading -----------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """What `evaluate` needs from a model file, plus what the report says about it."""

    cfg: Config
    logits_fn: LogitsFn
    info: dict  # path, backend, precision, epoch, best validation PV-DSC
    run_dir: Path | None  # the checkpoint's folder when it is a training run
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)

    @property
    def held_out(self) -> list[str]:
        """Validation patients that none of its networks trained on: what cross-validation
        scores. A run's validation patients; for a bundle of runs, those no member trained on
        (none for the shipped ensemble of all folds, one fold for `make nested`'s)."""
        trained = set(self.train_cases)
        return [c for c in self.val_cases if c not in trained]


def load_for_evaluation(path: Path | None = None, backend: str = "auto",
                        fp32: bool = True) -> LoadedModel:
    """Load a model with `inference.load_model` (path None: the bundled one).

    By default (`fp32`) a PyTorch model runs on the fp32 path of `predict`, so the
    scores are those of the masks users get, bit for bit. `fp32=False` runs it exactly
    as `train.validate` did (bf16 autocast and channels-last as its cfg.train says):
    about 3x faster on CPUs with AVX-512 bf16, and the plain variant then reproduces
    the training log's validation PV-DSC. ONNX models run as exported.
    """
    seg = load_model(path, backend)
    source = Path(seg.source)
    info: dict = {"path": str(source), "backend": seg.backend, "bundled": path is None,
                  "precision": "fp32 (as predict)"}
    logits_fn = seg.logits_fn
    provenance: dict = {}  # training and validation patients when the model file records them
    if seg.backend == "onnx":
        training = read_onnx_metadata(source).get("training") or {}
        provenance = {"train": training.get("train_cases") or [], "val": training.get("val_cases") or []}
    if seg.backend == "torch":
        state = load_checkpoint(source)
        provenance = {"train": state.get("train_cases", []), "val": state.get("val_cases", [])}
        info.update(epoch=state.get("epoch"), best_val_dice=state.get("best_dice"))
        if not fp32:
            logits_fn, info["precision"] = _as_validated(*model_from_checkpoint(state))
    run = _read_run_json(source.parent / "run.json")
    seen = run or provenance
    return LoadedModel(cfg=seg.cfg, logits_fn=logits_fn, info=info,
                       run_dir=source.parent if run is not None else None,
                       train_cases=list(seen.get("train") or []),
                       val_cases=list(seen.get("val") or []))


def member_models(path: Path | None = None, fp32: bool = True) -> list[LoadedModel]:
    """Each network of an ensemble file (None: the bundled model) as one cross-validation fold.

    The bundled ensemble is five fold networks, each recording the patients it validated on
    (`checkpoint.member_states`), so `cross_validate` on these reproduces the model card's
    cross-validation from the shipped file alone. The weights are the stored ones (fp16,
    upcast), not the training runs' fp32 best.pt, so scores may differ in the last digits.
    """
    source = Path(path) if path is not None else bundled_model_path()
    if not source.is_file():
        raise CheckpointError(f"{source}: no such model file")
    models = []
    for i, state in enumerate(member_states(load_checkpoint(source))):
        model, cfg = model_from_checkpoint(state)
        logits_fn, precision = (torch_logits_fn(model), "fp32 (as predict)") if fp32 \
            else _as_validated(model, cfg)
        info = {"path": f"{source} (network {i})", "backend": "torch", "bundled": path is None,
                "precision": precision, "epoch": state.get("epoch"),
                "best_val_dice": state.get("best_dice")}
        models.append(LoadedModel(cfg=cfg, logits_fn=logits_fn, info=info, run_dir=None,
                                  train_cases=list(state.get("train_cases") or []),
                                  val_cases=list(state.get("val_cases") or [])))
    return models


def _as_validated(model: torch.nn.Module, cfg: Config) -> tuple[LogitsFn, str]:
    """A network run as `train.validate` ran it (cfg.train's precision), and its report label."""
    bf16, channels_last = use_bf16(cfg.train.bf16), cfg.train.channels_last
    label = ("bf16" if bf16 else "fp32") + (
        ", channels-last" if channels_last else "") + " (as validated)"
    return torch_logits_fn(model, bf16=bf16, channels_last=channels_last), label


def _read_run_json(path: Path) -> dict | None:
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return run if isinstance(run, dict) else None


def chosen_post(post: PostConfig, **choices) -> PostConfig:
    """The model's own post-processing with the command-line choices: PostConfig fields
    (tta, tta_mirror, largest_component, min_size, largest_by, fill_holes); None keeps the
    model's."""
    return replace(post, **{k: v for k, v in choices.items() if v is not None})
