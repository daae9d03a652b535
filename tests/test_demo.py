"""`gliomaseg demo --quick`: synthetic data -> tiny model -> report, end to end via the CLI."""

from __future__ import annotations

import json

from conftest import run_cli


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = run_cli("demo", out, "--quick")
    assert res.returncode == 0, res.stderr
    report = out / "report" / "report.html"
    assert report.is_file() and str(report.resolve()) in res.stdout
    summary = json.loads((out / "report" / "summary.json").read_text())
    dice = summary["aggregate"]["dice_mean"]
    assert isinstance(dice, float) and 0.0 <= dice <= 1.0
    page = report.read_text()
    gallery = page.split('<div class="gallery">', 1)[1]
    assert gallery.count('src="data:image/png;base64,') >= 1
    # held-out: the evaluated patients are neither training nor validation patients
    run = json.loads((out / "run" / "run.json").read_text())
    evaluated = {r["case"] for r in summary["per_case"]}
    assert evaluated and not evaluated & (set(run["train"]) | set(run["val"]))
    assert (out / "run" / "best.pt").is_file() and (out / "run" / "curves.png").is_file()
    assert "Training curves" in page and "Not a held-out test" not in page



def test_demo_refuses_to_overwrite_and_reruns_with_overwrite(tmp_path, capsys):
    """In-process (cli.main): `make demo` always passes --overwrite on a second run."""
    from gliomaseg.cli import main

    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    assert main(["demo", str(out), "--quick"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo", str(out), "--quick", "--overwrite"]) == 0
    assert (out / "report" / "report.html").is_file() and (out / "keep.txt").is_file()
