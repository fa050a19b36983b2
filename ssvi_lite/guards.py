"""Checks at the command line's boundary, run before any work (README "What the kit promises").

- :class:`OneLineParser`: argparse whose errors are one line (``error: ...``) and exit status 2,
  and the flag types :func:`positive_int`, :func:`non_negative_int`, :func:`positive_float`.
- :func:`check_result_file`: a results file that exists is replaced only by the runs that wrote
  it (the same run ids: the same configurations and seeds, e.g. after ``--resume``) or with
  ``--overwrite``; anything else — another run's results, a file that is not kit results — is
  refused.
- :func:`check_checkpoint_target`: an existing checkpoint is continued (``--resume``) or replaced
  (``--overwrite``), never silently overwritten by a new run.
- :func:`check_distinct`: two outputs of one command may not be the same file.

Output paths themselves (file vs folder, writable) are checked by
:func:`ssvi_lite.fileio.check_output_path`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, ``error: ...``, exit status 2
    (subcommand parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str, ok: Any) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _number(text, int, "a non-negative integer", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a positive finite number", lambda v: math.isfinite(v) and v > 0)


# ----------------------------------------------------------------------------- results files
def run_ids_in(path: str | os.PathLike) -> list[Any] | None:
    """The run ids a results file holds (one per row, None for a row without one), or None when
    it is not a readable JSON object or list of objects."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    rows = data if isinstance(data, list) else [data]
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return [r.get("run_id") for r in rows]


def check_result_file(path: str | os.PathLike | None, run_ids: Sequence[str], *,
                      overwrite: bool, flag: str = "--json") -> None:
    """FileExistsError if ``path`` exists and holds anything but the results of ``run_ids`` (in
    that order), unless ``overwrite``."""
    if path is None or overwrite or not Path(path).exists():
        return
    found = run_ids_in(path)
    if found == list(run_ids):
        return  # the same runs wrote it: replacing it loses nothing
    what = ("is not a kit results file" if found is None else
            f"holds the results of other runs ({', '.join(str(r) for r in found[:3])})")
    raise FileExistsError(f"{flag} {path} already exists and {what}; choose another {flag} path, "
                          "or pass --overwrite to replace it")


def check_checkpoint_target(path: str | os.PathLike | None, *, resume: bool,
                            overwrite: bool) -> None:
    """A new run never writes over an existing checkpoint unless told to; ``--resume`` needs one."""
    if path is None:
        if resume:
            raise ValueError("--resume needs --checkpoint PATH (the checkpoint to continue from)")
        return
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume continues "
                         f"checkpoint {path}, --overwrite starts afresh and replaces it")
    exists = Path(path).exists()
    if resume and not exists:
        raise FileNotFoundError(f"checkpoint {path} does not exist: there is nothing to resume "
                                "(drop --resume to start a new run)")
    if exists and not resume and not overwrite:
        raise FileExistsError(f"checkpoint {path} already exists (another run's progress): pass "
                              "--resume to continue it, or --overwrite to start afresh and "
                              "replace it, or choose another --checkpoint path")


def check_distinct(**paths: str | os.PathLike | None) -> None:
    """ValueError if two of the named output paths are the same file."""
    seen: dict[Path, str] = {}
    for name, path in paths.items():
        if path is None:
            continue
        key = Path(path).absolute()
        if key in seen:
            raise ValueError(f"{seen[key]} and {name} are the same file ({path}); give each its "
                             "own path")
        seen[key] = name
