"""The lessons' exercises: their shape, the student versions made from them, and how a student
version stops at its first unsolved exercise (docs/course.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("0[1-7]_*.ipynb"))


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _exercises(path: Path) -> list[dict]:
    """Per exercise (in order): its prompt, answer and check cells."""
    out: list[dict] = []
    for cell in nbformat.read(path, as_version=4).cells:
        tags = _tags(cell)
        if "exercise" in tags:
            out.append({"prompt": cell, "solutions": [], "checks": []})
        elif out and "solution" in tags:
            out[-1]["solutions"].append(cell)
        elif out and "check" in tags:
            out[-1]["checks"].append(cell)
    return out


def test_seven_lessons_hold_at_least_three_exercises_each() -> None:
    assert len(LESSONS) == 7
    counts = {p.name: len(_exercises(p)) for p in LESSONS}
    assert all(n >= 3 for n in counts.values()) and sum(counts.values()) >= 21, counts


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_each_exercise_has_a_prompt_an_answer_region_and_a_check(path: Path) -> None:
    for number, ex in enumerate(_exercises(path), start=1):
        prompt = ex["prompt"]
        assert prompt.cell_type == "markdown", (path.name, number)
        assert re.search(rf"Exercise {number}\b", prompt.source), (path.name, number)
        assert re.search(r"★", prompt.source), f"{path.name} exercise {number}: give its level"
        assert ex["solutions"], f"{path.name} exercise {number} has no solution cell"
        for cell in ex["solutions"]:
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
        assert len(ex["checks"]) == 1, f"{path.name} exercise {number}: one check cell"
        assert re.search(rf"exercise\.check\(\s*{number}\b", ex["checks"][0].source), \
            f"{path.name} exercise {number}: the check cell must call " \
            f"sl.exercise.check({number}, …)"


def test_the_student_versions_are_in_sync_with_the_lessons() -> None:
    done = subprocess.run([sys.executable, "scripts/make_exercises.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for path in LESSONS:
        student = nbformat.read(ROOT / "student" / path.name, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        assert "BEGIN SOLUTION" not in text and "your turn" in text


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_student_version_stops_at_its_first_exercise_with_a_clear_message(path: Path) -> None:
    nb = nbformat.read(ROOT / "student" / path.name, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "solution" in _tags(c))
    nb.cells = nb.cells[:first + 2]  # up to the first answer (and its check); no further
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    with pytest.raises(CellExecutionError) as failure:
        client.execute()
    assert failure.value.ename == "NotImplementedError"
    assert "exercise 1: your turn" in failure.value.evalue
    ran = [c for c in nb.cells[:first] if c.cell_type == "code"]
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", []))
               for c in ran), "a cell before the first exercise failed"
