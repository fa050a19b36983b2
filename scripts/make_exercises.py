"""``make exercises``: the student versions of the lessons, made from the one source in notebooks/.

In a lesson, an exercise is a prompt cell (tag ``exercise``), answer cells (tag ``solution``, the
answer between nbgrader's ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines) and a check cell
(tag ``check``, ``sl.exercise.check(N, ...)``). nbgrader's ClearSolutions preprocessor cuts every
answer region out; here each cut becomes a line that stops the notebook with "exercise N: your
turn", N counted from the prompts, and all outputs are cleared. The student versions go to
``student/`` (committed, so they can be handed out as they are; a test regenerates them and fails
if the committed ones drift).

    python scripts/make_exercises.py            # write student/*.ipynb
    python scripts/make_exercises.py --check    # exit 1 if student/ is not what this would write
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat
from nbgrader.preprocessors import ClearSolutions

ROOT = Path(__file__).resolve().parents[1]
SOURCE, STUDENT = ROOT / "notebooks", ROOT / "student"
MARK = "__EXERCISE_STUB__"


def your_turn(number: int) -> str:
    """The stub of exercise ``number`` (the message of ``ssvi_lite.exercise.your_turn``)."""
    sys.path.insert(0, str(ROOT))
    from ssvi_lite.exercise import your_turn as message

    return f"raise NotImplementedError({message(number)!r})"


def student_version(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with every answer region replaced by its numbered stub, outputs cleared."""
    clear = ClearSolutions(enforce_metadata=False, code_stub={"python": f"raise {MARK}"})
    nb, _ = clear.preprocess(nbformat.from_dict(json.loads(json.dumps(notebook))),
                             {"language": "python"})
    number = 0
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        number += "exercise" in tags
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if MARK in cell.source:
                cell.source = cell.source.replace(f"raise {MARK}", your_turn(max(number, 1)))
    return nb


def lessons() -> list[Path]:
    return sorted(p for p in SOURCE.glob("[0-9][0-9]_*.ipynb"))


def render(path: Path) -> str:
    nb = student_version(nbformat.read(path, as_version=4))
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare student/ with what would be written")
    args = parser.parse_args(argv)
    stale = []
    for path in lessons():
        target, text = STUDENT / path.name, render(path)
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
        else:
            STUDENT.mkdir(exist_ok=True)
            target.write_text(text)
            print(f"{target.relative_to(ROOT)}")
    if stale:
        print(f"student versions out of date: {', '.join(stale)}; run `make exercises`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
