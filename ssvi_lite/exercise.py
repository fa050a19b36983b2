"""Exercises in the notebooks: the check that tells a student whether an answer is right
(docs/course.md explains the format and how student versions are made).

Each exercise is three cells: a prompt (Markdown, tag ``exercise``), the answer (code, tag
``solution``, the answer between nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines)
and a check (code, tag ``check``) that calls :func:`check`. ``make exercises`` writes the student
versions (``student/``), in which each answer region is replaced by a line that stops the notebook
with "exercise N: your turn".
"""
from __future__ import annotations

from typing import Any


class NotYet(AssertionError):
    """An answer that is not right yet (the message says why and gives a hint)."""


def your_turn(number: int) -> str:
    """The message of an unanswered exercise (what the student version's stub raises)."""
    return (f"exercise {number}: your turn — write your answer in this cell (replace this line), "
            "then run the check below it")


def check(number: int, ok: Any, hint: str = "", detail: str = "") -> None:
    """Print "exercise N: right" when ``ok`` holds, else raise :class:`NotYet` with the hint.

    ``detail`` (e.g. "you predicted 0.4, the run gave 0.31") is shown either way.
    """
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ValueError(f"exercise number must be a positive integer, got {number!r}")
    note = f" ({detail})" if detail else ""
    if not bool(ok):
        raise NotYet(f"exercise {number}: not yet{note}. {hint}".rstrip(". ") + ".")
    print(f"exercise {number}: right{note}")
