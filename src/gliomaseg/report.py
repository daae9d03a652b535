"""Write an evaluation to OUT_DIR: summary.json, per_case.csv and a self-contained report.html.

The HTML page has no external resources (inline CSS, images as base64 PNG), so it
can be mailed or archived as one file. Numbers come from `summary`, which is built
once and also written as summary.json, so the page and the JSON cannot disagree.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from . import __version__, metrics, viz
from .data import DataError, read_patient
from .evaluate import (
    Evaluation,
    LoadedModel,
    aggregate,
    by_fold,
    by_site,
    gallery_cases,
    gallery_slices,
    slice_level,
    variant_table,
)
from .nifti import read_nifti
from .preprocess import FLAIR

CASE_FIELDS = ["case", "site", "fold", "dice", "iou", "precision", "recall", "pixel_accuracy", "hd95",
               "volume_true", "volume_pred", "abs_volume_diff", "slices", "tumour_slices",
               "seconds"]
TABLE_SCORES = [("dice", "Dice (PV-DSC)", 3), ("iou", "IoU", 3), ("precision", "Precision", 3),
                ("recall", "Recall", 3), ("pixel_accuracy", "Pixel accuracy", 4),
                ("hd95", "HD95 (voxels)", 1), ("abs_volume_diff", "|Volume difference| (voxels)",
                                              0)]


# --- summary -----------------------------------------------------------------------------------

def json_safe(obj):
    """NaN/inf -> None, NumPy scalars/arrays -> Python, tuples -> lists, Paths -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def per_case_rows(ev: Evaluation) -> list[dict]:
    """One row per patient; "fold" is the cross-validation fold that scored it (else None)."""
    fold_of = {case: i for i, fold in enumerate(ev.folds or []) for case in fold["cases"]}
    rows = []
    for r in ev.cases:
        row = {"case": r.case, "site": r.site, "fold": fold_of.get(r.case),
               **{k: r.scores[k] for k in CASE_FIELDS if k in r.scores}}
        row["tumour_slices"] = int(np.count_nonzero(r.slices.tp + r.slices.fn))
        row["seconds"] = round(r.seconds, 3)
        row["variants"] = dict(r.variant_dice)
        rows.append(row)
    return rows


def build_summary(ev: Evaluation, model: LoadedModel | None = None) -> dict:
    """Everything the report shows, JSON-ready (NaN -> None)."""
    names = [r.case for r in ev.cases]
    slices = sum(r.shape[0] for r in ev.cases)
    model_info = dict(model.info) if model else {}
    if model:
        model_info["evaluated_cases_in_training"] = sorted(set(names) & set(model.train_cases))
        model_info["evaluated_cases_in_validation"] = sorted(set(names) & set(model.val_cases))
        model_info["curves"] = bool(model.run_dir and (model.run_dir / "curves.png").is_file())
    summary = {
        "aggregate": aggregate(ev.cases),
        "per_case": per_case_rows(ev),
        "slice_level": slice_level(ev.cases),
        "by_site": by_site(ev.cases),
        "folds": by_fold(ev.cases, ev.folds),
        "variants": variant_table(ev.cases, ev.variants, ev.post),
        "nested_post": ev.nested,
        "model": model_info,
        "units": {"hd95": ev.hd95_unit, "volume": "voxels"},
        "config": {"data": str(ev.data), "cases": names, "post": dataclasses.asdict(ev.post),
                   "model_config": ev.cfg.to_dict(), **ev.settings},
        "timing": {"seconds": round(ev.seconds, 2), "patients": len(names), "slices": slices,
                   "seconds_per_patient": round(ev.seconds / max(1, len(names)), 3),
                   "slices_per_second": round(slices / ev.seconds, 2) if ev.seconds > 0 else None,
                   **{k: ev.settings[k] for k in ("threads", "network_passes_per_slice")
                      if k in ev.settings}},
        "gliomaseg": __version__,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return json_safe(summary)


# --- figures -----------------------------------------------------------------------------------

def gallery(ev: Evaluation) -> list[dict]:
    """Best, median and worst patients: chosen slices rendered as one PNG each."""
    items = []
    for label, r in gallery_cases(ev.cases):
        patient = (read_nifti(r.folder, labels=r.labels).patient if r.labels is not None
                   else read_patient(r.folder, require_masks=True))
        picks = gallery_slices(r.slices)
        index = [i for _, i in picks]
        slice_dice = metrics.dice(metrics.Counts(*(getattr(r.slices, k)[index]
                                                   for k in ("tp", "fp", "fn", "tn"))))
        titles = [f"slice {patient.slice_numbers[i]} - {why}\nslice Dice {_fmt(d, 2)}"
                  for (why, i), d in zip(picks, slice_dice, strict=True)]
        png = viz.plot_gallery(patient.image[index, ..., FLAIR], patient.mask[index],
                               r.mask()[index], titles)
        items.append({"label": label, "case": r.case, "dice": r.dice, "png": png})
    return items


def figures(ev: Evaluation, model: LoadedModel | None = None) -> dict:
    dice = [r.dice for r in ev.cases]
    curves = model.run_dir / "curves.png" if model and model.run_dir else None
    return {
        "distribution": viz.plot_dice_distribution(dice),
        "per_case": viz.plot_per_case([r.case for r in ev.cases], dice, [r.site for r in ev.cases]),
        "gallery": gallery(ev),
        "curves": curves.read_bytes() if curves is not None and curves.is_file() else None,
    }


# --- files -------------------------------------------------------------------------------------

def write_report(out_dir: Path, ev: Evaluation, model: LoadedModel | None = None) -> dict:
    """Write summary.json, per_case.csv and report.html into out_dir; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = build_summary(ev, model)
    _write(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _write(out_dir / "per_case.csv", per_case_csv(summary["per_case"]))
    _write(out_dir / "report.html", render_html(summary, figures(ev, model)))
    return summary


def read_case_scores(path: Path, variant: str | None = None,
                     metric: str = "dice") -> dict[str, float]:
    """{patient: PV-DSC} of an evaluation folder (or its summary.json); null -> NaN.

    `variant` (a name of the variants table, e.g. "plain" or "+TTA") picks that
    post-processing instead of the one the evaluation used; the table holds PV-DSC only.
    `metric` picks another per-patient column of the evaluation's own post-processing,
    e.g. "precision" or "recall".
    """
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    try:
        rows = json.loads(path.read_text())["per_case"]
        scores = {r["case"]: r[metric] if variant is None else r["variants"][variant]
                  for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"no variant {variant!r}" if isinstance(exc, KeyError) and variant else "unreadable"
        raise DataError(f"{path}: not a gliomaseg evaluation summary ({what})") from None
    return {case: math.nan if v is None else float(v) for case, v in scores.items()}


def per_case_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CASE_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in CASE_FIELDS}
                     for row in rows)
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --- HTML --------------------------------------------------------------------------------------

CSS = """
:root { --fg: #1c2433; --muted: #5d6778; --line: #e2e6ee; --accent: #24507a; --bg: #f4f6fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #1d3856; color: #fff; padding: 26px 0 20px; }
.wrap { max-width: 1140px; margin: 0 auto; padding: 0 28px; }
h1 { margin: 0 0 4px; font-size: 25px; font-weight: 600; letter-spacing: .2px; }
header .meta { color: #c7d4e4; font-size: 13.5px; }
header .meta code { color: #fff; }
.notice { background: #fff6e6; border: 1px solid #f3d19c; border-left: 4px solid #e89a2c;
  border-radius: 6px; padding: 10px 14px; margin: 18px 0 0; font-size: 14px; }
.warn { background: #fdecec; border-color: #f1b1b1; border-left-color: #d64545; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 12px;
  margin: 18px 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.card .value { font-size: 25px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 13px; }
.card .extra { color: var(--muted); font-size: 12px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 18px 24px 20px; margin: 16px 0; }
h2 { font-size: 18px; margin: 0 0 10px; color: var(--accent); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.note, .caption { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px;
  font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef2f8; font-weight: 600; position: sticky; top: 0; }
tbody tr:hover td { background: #f7f9fc; }
tr.chosen td { background: #eaf3ff; font-weight: 600; }
.best { color: #1b7f3b; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; }
.figs { display: grid; grid-template-columns: 1fr; gap: 16px; margin-top: 14px; }
.split { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 28px;
  align-items: start; }
.split h3 { margin-top: 4px; }
@media (max-width: 800px) { .split { grid-template-columns: 1fr; } }
.table-scroll { max-height: 560px; overflow: auto; border: 1px solid var(--line);
  border-radius: 6px; }
.gallery figure { margin: 0 0 18px; }
.gallery figcaption { font-weight: 600; margin-bottom: 4px; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  background: #eef2f8; color: var(--accent); margin-left: 6px; font-weight: 600; }
footer { color: var(--muted); font-size: 12.5px; padding: 6px 0 40px; }
dl.defs { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px;
  font-size: 13.5px; margin: 0; }
dl.defs dt { font-weight: 600; }
dl.defs dd { margin: 0; color: var(--muted); }
"""


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _ci(values, digits: int = 3) -> str:
    if not values or values[0] is None:
        return "n/a"
    return f"{_fmt(values[0], digits)} - {_fmt(values[1], digits)}"


def _cards(s: dict) -> str:
    a, det = s["aggregate"], s["slice_level"]["detection"]
    cards = [
        ("Mean PV-DSC", _fmt(a["dice_mean"]), f"95% CI {_ci(a['dice_ci95'])}"),
        ("Median PV-DSC", _fmt(a["dice_median"]), f"{a['dice_n']} of {a['cases']} patients"),
        ("Mean IoU", _fmt(a["iou_mean"]), f"median {_fmt(a['iou_median'])}"),
        ("Median HD95", _fmt(a["hd95_median"], 1), s["units"]["hd95"]),
        ("Slice detection", f"{_fmt(det['sensitivity'], 2)} / {_fmt(det['specificity'], 2)}",
         "sensitivity / specificity"),
        ("Evaluation time", f"{_fmt(s['timing']['seconds'], 0)} s",
         f"{_fmt(s['timing']['slices_per_second'], 1)} slices/s"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div>'
        f'<div class="extra">{html.escape(extra)}</div></div>'
        for label, value, extra in cards) + "</div>"


def _aggregate_table(a: dict, hd95_unit: str) -> str:
    rows = "".join(
        f"<tr><td>{label.replace('(voxels)', f'({hd95_unit})') if k == 'hd95' else label}</td>"
        f"<td>{_fmt(a[f'{k}_mean'], d)}</td><td>{_fmt(a[f'{k}_median'], d)}"
        f"</td><td>{_fmt(a[f'{k}_std'], d)}</td><td>{_ci(a[f'{k}_ci95'], d)}</td>"
        f"<td>{a[f'{k}_n']}</td></tr>" for k, label, d in TABLE_SCORES)
    excluded = a["excluded_empty"]
    note = (f"{len(excluded)} patient(s) with empty truth and empty prediction excluded from "
            f"the means: {html.escape(', '.join(excluded))}." if excluded else
            "No patient had both an empty truth and an empty prediction.")
    return (
        "<table><thead><tr><th>per patient</th><th>mean</th><th>median</th><th>std</th>"
        f"<th>95% CI of the mean</th><th>n</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="note">Pooled over every pixel of every patient: Dice '
        f"{_fmt(a['dice_global'])}, pixel accuracy {_fmt(a['pixel_accuracy'], 4)}. {note}</p>")


def _variants_table(rows: list[dict]) -> str:
    if not rows:
        return ('<p class="note">Variants were not computed (--no-variants).</p>')
    best = max((r["dice_mean"] for r in rows if r["dice_mean"] is not None), default=None)
    body = []
    for r in rows:
        mean = _fmt(r["dice_mean"])
        if best is not None and r["dice_mean"] == best:
            mean = f'<span class="best">{mean}</span>'
        tag = '<span class="tag">used above</span>' if r["chosen"] else ""
        body.append(
            f'<tr class="{"chosen" if r["chosen"] else ""}"><td>{html.escape(r["name"])}{tag}</td>'
            f"<td>{_fmt(r['tta'])}</td><td>{'by ' + r['largest_by'] if r['largest_component'] else 'no'}</td>"
            f"<td>{r['min_size'] or '-'}</td><td>{mean}</td><td>{_fmt(r['dice_median'])}</td>"
            f"<td>{r['n']}</td></tr>")
    return ("<table><thead><tr><th>variant</th><th>flip TTA</th><th>largest 3D component</th>"
            "<th>min size (voxels)</th><th>mean PV-DSC</th><th>median PV-DSC</th><th>n</th>"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
            '<p class="note">Network probabilities are computed once per TTA setting; only the '
            "post-processing differs between rows. Choose the default on validation patients, "
            "not on the patients you report.</p>")


def _fold_table(folds: list[dict]) -> str:
    if not folds:
        return ""
    body = "".join(
        f"<tr><td>{f['fold']}</td><td><code>{html.escape(f['model'])}</code></td>"
        f"<td>{f['patients']}</td><td>{_fmt(f['dice_mean'])}</td><td>{_fmt(f['dice_median'])}"
        f"</td><td>{_ci(f['dice_ci95'])}</td><td>{_fmt(f['iou_mean'])}</td></tr>" for f in folds)
    return ("<section><h2>Cross-validation folds</h2><table><thead><tr><th>fold</th>"
            "<th>model</th><th>validation patients</th><th>mean PV-DSC</th>"
            "<th>median PV-DSC</th><th>95% CI</th><th>mean IoU</th></tr></thead>"
            f"<tbody>{body}</tbody></table><p class=\"note\">Each fold's model scores only its "
            "own validation patients; the numbers above pool all of them.</p></section>")


def _nested_table(nested: dict | None) -> str:
    if not nested:
        return ""
    body = "".join(
        f"<tr><td>{f['fold']}</td><td>{html.escape(f['choice'])}</td>"
        f"<td>{_fmt(f['inner_mean'])}</td><td>{f['patients']}</td><td>{_fmt(f['dice_mean'])}</td>"
        "</tr>" for f in nested["folds"])
    d = nested["dice"]
    return ("<section><h2>Post-processing chosen by nested cross-validation</h2>"
            "<table><thead><tr><th>fold</th><th>chosen on the other folds</th>"
            "<th>its mean PV-DSC there</th><th>patients</th><th>mean PV-DSC on this fold</th>"
            f"</tr></thead><tbody>{body}</tbody></table>"
            f'<p class="note">Pooled: mean PV-DSC {_fmt(d["mean"])} (95% CI {_ci(d["ci95"])}), '
            f"median {_fmt(d['median'])}, n {d['n']}. Each fold's post-processing is the best of "
            f"{nested['candidates']} candidates (threshold, flip TTA, component rule, min size) "
            "on the other folds' patients, so no patient's score depends on a choice made with "
            "its own ground truth.</p></section>")


def _site_table(sites: dict) -> str:
    body = "".join(
        f"<tr><td>{html.escape(site)}</td><td>{v['patients']}</td><td>{_fmt(v['dice_mean'])}</td>"
        f"<td>{_fmt(v['dice_median'])}</td></tr>" for site, v in sites.items())
    return ("<table><thead><tr><th>site</th><th>patients</th><th>mean PV-DSC</th>"
            f"<th>median PV-DSC</th></tr></thead><tbody>{body}</tbody></table>")


def _case_table(rows: list[dict]) -> str:
    head = ("<tr><th>patient</th><th>site</th><th>PV-DSC</th><th>IoU</th><th>precision</th>"
            "<th>recall</th><th>HD95</th><th>true volume</th><th>predicted volume</th>"
            "<th>slices</th><th>tumour slices</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(r['case'])}</td><td>{html.escape(r['site'])}</td>"
        f"<td>{_fmt(r['dice'])}</td><td>{_fmt(r['iou'])}</td><td>{_fmt(r['precision'])}</td>"
        f"<td>{_fmt(r['recall'])}</td><td>{_fmt(r['hd95'], 1)}</td>"
        f"<td>{_fmt(r['volume_true'])}</td><td>{_fmt(r['volume_pred'])}</td>"
        f"<td>{r['slices']}</td><td>{r['tumour_slices']}</td></tr>"
        for r in sorted(rows, key=lambda r: -1 if r["dice"] is None else r["dice"]))
    return (f'<div class="table-scroll"><table><thead>{head}</thead><tbody>{body}</tbody>'
            "</table></div><p class=\"note\">Sorted from worst to best PV-DSC. Volumes in voxels "
            "of the native grid. The same numbers are in per_case.csv and summary.json.</p>")


def _gallery(items: list[dict]) -> str:
    if not items:
        return '<p class="note">No patient has a defined Dice, so there is nothing to show.</p>'
    return '<div class="gallery">' + "".join(
        f'<figure><figcaption>{html.escape(item["label"].capitalize())}: '
        f'{html.escape(item["case"])} <span class="tag">PV-DSC {_fmt(item["dice"])}</span>'
        f'</figcaption>{_img(item["png"], item["label"] + " patient " + item["case"])}</figure>'
        for item in items) + "</div>"


def _warnings(s: dict) -> str:
    m = s["model"]
    seen = m.get("evaluated_cases_in_training", []) + m.get("evaluated_cases_in_validation", [])
    if not seen:
        return ""
    n_train = len(m.get("evaluated_cases_in_training", []))
    n_val = len(m.get("evaluated_cases_in_validation", []))
    return (f'<div class="notice warn"><b>Not a held-out test:</b> {n_train} of the evaluated '
            f"patients were used to train this model and {n_val} to select it (its run.json). "
            "Scores on them are optimistic.</div>")


DEFINITIONS = [
    ("PV-DSC", "Dice 2TP / (2TP + FP + FN) over all slices of a patient pooled, on the native "
               "256x256 grid; the headline number, averaged over patients."),
    ("IoU", "TP / (TP + FP + FN). Precision TP / (TP + FP); recall TP / (TP + FN)."),
    ("HD95", "95th-percentile symmetric Hausdorff distance between the 3D surfaces (MONAI), in "
             "voxels (in-plane pixels; one slice step counts as 1), or in mm when the input "
             "gives its voxel size (NIfTI)."),
    ("Empty cases", "When truth and prediction are both empty a score is undefined and the "
                    "patient or slice is excluded from means, never scored 1. A prediction "
                    "on a tumour-free slice scores 0."),
    ("95% CI", "Percentile bootstrap of the mean over patients (2,000 resamples, seed 0)."),
    ("Slice detection", "A slice is positive if it has any tumour pixel; sensitivity and "
                        "specificity over all slices of all patients."),
]


TTA_WORDS = {"left-right": "flip TTA", "both": "flip TTA on both axes"}


def _post_text(post: dict) -> str:
    """The post-processing settings in words, e.g. 'threshold 0.5, flip TTA'."""
    return ", ".join([f"threshold {post['threshold']}"]
                     + ([TTA_WORDS[post["tta_mirror"]]] if post["tta"] else [])
                     + ([f"largest 3D component (by {post['largest_by']})"]
                        if post["largest_component"] else [])
                     + ([f"min size {post['min_size']} voxels"] if post["min_size"] else [])
                     + (["fill holes"] if post["fill_holes"] else []))


def _slice_section(sl: dict) -> str:
    """Slice counts, slice Dice and slice detection (slice_level of the summary)."""
    det = sl["detection"]
    return f"""<section><h2>Slice level</h2>
<table><thead><tr><th>slices</th><th>with tumour</th><th>mean slice Dice</th>
<th>median slice Dice</th><th>slices scored</th><th>detection sensitivity</th>
<th>detection specificity</th></tr></thead><tbody><tr><td>{sl['slices']:,}</td>
<td>{sl['tumour_slices']:,}</td><td>{_fmt(sl['dice']['mean'])}</td>
<td>{_fmt(sl['dice']['median'])}</td><td>{sl['dice']['n']:,}</td>
<td>{_fmt(det['sensitivity'])}</td><td>{_fmt(det['specificity'])}</td></tr></tbody></table>
<p class="note">Detection counts: {det['tp']} true positive, {det['fp']} false positive,
{det['fn']} false negative, {det['tn']} true negative slices. Slice Dice excludes slices where
truth and prediction are both empty.</p></section>"""


def render_html(s: dict, figs: dict) -> str:
    """The report page from a summary (build_summary) and figures (figures())."""
    a, cfg, m = s["aggregate"], s["config"], s["model"]
    post_text = _post_text(cfg["post"])
    model_text = f"<code>{html.escape(m.get('path', 'unknown model'))}</code>"
    if s["folds"]:
        model_text = (f"{len(s['folds'])} fold models (cross-validation: each patient scored "
                      "by the model that did not train on it)")
    if m.get("epoch") is not None:
        model_text += f" (epoch {m['epoch']}, validation PV-DSC {_fmt(m.get('best_val_dice'))})"
    curves = (f"<section><h2>Training curves</h2>{_img(figs['curves'], 'training curves')}"
              '<p class="caption">From the model\'s run folder (curves.png).</p></section>'
              if figs.get("curves") else "")
    defs = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gliomaseg evaluation - {a['cases']} patients</title>
<style>{CSS}</style></head>
<body>
<header><div class="wrap">
<h1>Glioma segmentation: evaluation report</h1>
<div class="meta">{a['cases']} patients, {s['timing']['slices']:,} slices from
<code>{html.escape(cfg['data'])}</code><br>
model {model_text}, backend {html.escape(str(m.get('backend', '?')))},
{html.escape(str(m.get('precision', '?')))}<br>
post-processing: {html.escape(post_text)} &middot; gliomaseg {html.escape(s['gliomaseg'])}
&middot; {html.escape(s['created'])}</div>
</div></header>
<main class="wrap">
<div class="notice"><b>Research use only.</b> Not a medical device; not for diagnosis or treatment
decisions. Scores describe these patients and this model only.</div>
{_warnings(s)}
{_cards(s)}
<section><h2>Aggregate metrics</h2>{_aggregate_table(a, s["units"]["hd95"])}</section>
{_fold_table(s['folds'])}
<section><h2>Post-processing and test-time augmentation</h2>{_variants_table(s['variants'])}
</section>
{_nested_table(s.get('nested_post'))}
<section><h2>Dice per patient</h2><div class="split">
<div>{_img(figs['distribution'], 'distribution of PV-DSC over patients')}</div>
<div><h3>By acquisition site</h3>{_site_table(s['by_site'])}</div></div>
<div class="figs">{_img(figs['per_case'], 'PV-DSC of each patient')}</div>
<p class="caption">Distribution of PV-DSC over patients, its mean and median by site, and every
patient sorted and coloured by site.</p></section>
<section><h2>Gallery: best, median and worst patient</h2>
<p class="note">For each patient: the slice with the most true tumour and the slice with the
largest error (false positives + false negatives). FLAIR channel; overlay: ground truth
outlined, prediction filled.</p>{_gallery(figs['gallery'])}</section>
{_slice_section(s["slice_level"])}
<section><h2>Per patient</h2>{_case_table(s['per_case'])}</section>
{curves}
<section><h2>Definitions</h2><dl class="defs">{defs}</dl>
<p class="note">Full definitions: docs/metrics.md in the gliomaseg repository.</p></section>
<footer>Timing: {_fmt(s['timing']['seconds'], 1)} s for {s['timing']['patients']} patients
({_fmt(s['timing']['seconds_per_patient'], 2)} s per patient,
{s['timing'].get('threads', '?')} threads).
</footer>
</main></body></html>
"""
