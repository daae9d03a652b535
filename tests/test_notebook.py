"""examples/quickstart.ipynb: committed clean, and executed end to end so that it cannot rot.

The notebook runs in a Jupyter kernel (nbclient, ipykernel from this venv) on synthetic data,
with the tiny test model swapped in through its parameters cell. The executed copy goes to a
temporary folder; examples/ is only read.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

import gliomaseg
from gliomaseg import metrics
from gliomaseg.data import read_patient
from gliomaseg.synth import case_name

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
NUMBER = r"(-?\d+(?:\.\d+)?|nan)"


def read_notebook() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def set_parameters(source: str, **values: object) -> str:
    """Replace `NAME = ...` lines of the parameters cell (each must exist exactly once)."""
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.MULTILINE)
        assert n == 1, f"parameter {name} not found in the parameters cell"
    return source


def stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def images(cell: nbformat.NotebookNode) -> list[str]:
    return [o.data["image/png"] for o in cell.outputs
            if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


def value(text: str, label: str) -> float:
    match = re.search(rf"{label}\s+{NUMBER}", text)
    assert match, f"no {label!r} in output:\n{text}"
    return float(match.group(1))


def test_committed_notebook_is_clean_and_defaults_to_synthetic_data_and_bundled_model():
    nb = read_notebook()
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is tagged(nb, "parameters")
    for name in ("DATA", "MODEL", "CASE", "WORK", "SPACING"):
        assert re.search(rf"^{name} = None\b", first_code.source, flags=re.MULTILINE), name
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert "gliomaseg.load_model(MODEL)" in tagged(nb, "segment").source
    last = nb.cells[-1]
    assert last.cell_type == "markdown"
    for needle in ("Buda", "Computers in Biology and Medicine", "2019", "Mazurowski",
                   "Journal of Neuro-Oncology", "2017"):
        assert needle in last.source


@pytest.mark.slow
def test_notebook_executes_on_synthetic_data(tmp_path, tiny_checkpoint):
    from nbclient import NotebookClient

    nb = read_notebook()
    params = tagged(nb, "parameters")
    work = tmp_path / "work"
    case = case_name(2)  # not the default first patient, so CASE is exercised too
    params.source = set_parameters(params.source, MODEL=str(tiny_checkpoint), WORK=str(work),
                                   CASE=case)
    before = {p.name: p.read_bytes() for p in NOTEBOOK.parent.iterdir() if p.is_file()}
    # The kernel's working directory is tmp_path: nothing may be written under examples/.
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for inspection when a check fails
    assert {p.name: p.read_bytes() for p in NOTEBOOK.parent.iterdir() if p.is_file()} == before

    for tag in ("view", "segment", "curves"):
        assert images(tagged(nb, tag)), f"cell {tag!r} shows no image"

    # The numbers the notebook prints are the library's numbers for the same patient and model.
    assert f"patient {case} (site" in stdout(tagged(nb, "load"))
    patient = read_patient(work / "synthetic" / "kaggle_3m" / case)
    expected = gliomaseg.load_model(tiny_checkpoint).predict(patient).mask
    volume = stdout(tagged(nb, "volume"))
    assert f"predicted tumour volume: {int(expected.sum())} voxels" in volume

    scores = stdout(tagged(nb, "evaluate"))
    counts = metrics.confusion(expected, patient.mask)
    dice, iou, accuracy = value(scores, "Dice"), value(scores, "IoU"), value(scores, "pixel accuracy")
    assert 0.0 <= iou <= dice <= 1.0 and 0.0 <= accuracy <= 1.0
    np.testing.assert_allclose([dice, iou, accuracy],
                               [metrics.dice(counts), metrics.iou(counts),
                                metrics.pixel_accuracy(counts)], atol=6e-5)

    run = work / "run"
    assert (run / "best.pt").is_file() and (run / "curves.png").is_file()
    best = value(stdout(tagged(nb, "train")), "best validation Dice")
    assert 0.0 <= best <= 1.0
    assert len(re.findall(r"^epoch \d+:", stdout(tagged(nb, "curves")), flags=re.MULTILINE)) >= 1
    assert 0.0 <= value(stdout(tagged(nb, "reuse")), "Dice") <= 1.0
