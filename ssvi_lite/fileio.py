"""Atomic file writes: a file either appears whole or not at all.

Every file the kit writes (checkpoints, JSON results, CSV tables, cached arrays, figures) goes
through here, so an interrupted run never leaves a half-written file that a later run trusts.
Files that belong together (the demo's JSON and figures) go through :func:`atomic_paths` or
:func:`staging` + :func:`publish`: all of them appear, or none. :func:`check_output_path` is
what every command calls on its output paths before it does any work, so that a bad path fails
at once instead of after the training.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)  # read the process umask once (os.umask can only read by setting) ...
os.umask(_UMASK)  # ... and put it back


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    >>> with atomic_path("out.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes it private (0600); give it a normal file's mode
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Like :func:`atomic_path` for files that belong together: yield one temporary path each and,
    if the block succeeds, :func:`publish` them all onto their targets; if the block fails, none
    is touched."""
    targets = [Path(p) for p in paths]
    with ExitStack() as stack:
        temps = [stack.enter_context(temporary(p)) for p in targets]
        yield temps
        publish(list(zip(temps, targets)))


def publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary file onto its target (same file system), giving it a
    normal file's mode; if a rename fails, the targets already renamed are removed again, so
    the files appear all or none."""
    done: list[Path] = []
    try:
        for tmp, path in pairs:
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
            done.append(Path(path))
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


@contextmanager
def temporary(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary file next to ``path`` (its folder created; its name ends like the
    target's, for writers that go by the suffix), removed after the block unless published."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                    dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


@contextmanager
def staging(folder: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder inside ``folder`` (created) for files written by code that takes a
    folder; :func:`publish` them from it. Removed with whatever is left after the block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging.", dir=folder))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class OutputPathError(ValueError):
    """An output path the kit cannot write (a folder where a file is wanted, no permission...)."""


def check_output_path(path: str | os.PathLike, kind: str = "file", *,
                      what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` ("file" or "folder"):
    a file must not be a folder, a folder must not be a file, and the path or its nearest existing
    parent folder must be writable (missing folders are created later). Raises
    :class:`OutputPathError` naming ``what`` and the path; returns the path."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind={kind!r}: choose file or folder")
    if not str(path).strip():
        raise OutputPathError(f"{what}: the path is empty; give a {kind} name")
    if "\0" in str(path):
        raise OutputPathError(f"{what} {str(path)!r} is not a valid path (it holds a NUL byte)")
    path = Path(path)
    try:
        _check_writable(path, kind, what)
    except OSError as err:  # a name too long, a loop of links...
        raise OutputPathError(f"{what} {path} cannot be written: {err.strerror or err}") from err
    except ValueError as err:
        if isinstance(err, OutputPathError):
            raise
        raise OutputPathError(f"{what} {str(path)!r} is not a valid path: {err}") from err
    return path


def _check_writable(path: Path, kind: str, what: str) -> None:
    if kind == "file" and (path.is_dir() or path.name in ("", ".", "..")):
        raise OutputPathError(f"{what} {path} is a folder; give a file name (e.g. "
                              f"{path / 'results.json'})")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file; give a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} {path} is not writable (permission denied)")
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path} cannot be written: folder {parent} is not writable")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(path,
                      json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
