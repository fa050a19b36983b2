"""The lessons run headless, as graders run them: ``jupyter nbconvert --execute`` (nbconvert's
ExecutePreprocessor) and papermill, each with a timeout, on the lessons with widgets
(docs/course.md). A hang or an error fails the test; so does a run over the time budget."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 150  # per lesson under the test suite (2 workers, one thread each); 90 s alone
WIDGET_LESSONS = {"01_dense_vi": "nbconvert", "03_snr_removal": "papermill",
                  "05_calibration": "nbconvert"}


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [o.get("ename", "") for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.parametrize("name, runner", WIDGET_LESSONS.items())
def test_a_widget_lesson_runs_headless_to_the_end_within_its_budget(name, runner,
                                                                    tmp_path) -> None:
    source = ROOT / "notebooks" / f"{name}.ipynb"
    start = time.perf_counter()
    if runner == "nbconvert":
        from nbconvert.preprocessors import ExecutePreprocessor

        nb = nbformat.read(source, as_version=4)
        ExecutePreprocessor(timeout=BUDGET_S, kernel_name="python3").preprocess(
            nb, {"metadata": {"path": str(ROOT / "notebooks")}})
    else:
        import papermill

        out = tmp_path / f"{name}.ipynb"
        papermill.execute_notebook(str(source), str(out), kernel_name="python3",
                                   cwd=str(ROOT / "notebooks"), execution_timeout=BUDGET_S,
                                   progress_bar=False)
        nb = nbformat.read(out, as_version=4)
    seconds = time.perf_counter() - start
    assert not _errors(nb)
    assert seconds < BUDGET_S, f"{name} took {seconds:.0f} s headless"
