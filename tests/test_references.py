"""Every reference to a Markdown document must lead somewhere a student can follow.

The code, notebooks and READMEs cite documents such as ``method.md §5``, ``docs/method.md §5`` or
``baselines.md §A``. This test finds every such reference in the scanned parts of the project and
fails, listing each dangling one with the file (and line or notebook cell) that cites it, when

(a) the document does not exist in the repository: a bare name (``method.md``) is looked up in
    ``docs/`` and at the repository root, a path (``docs/method.md``) from the repository root
    (or, when it starts with ``./`` or ``../``, from the citing file's folder, as Markdown links
    work); names must match exactly, case included;
(b) a cited section ``§X`` (X a number or a capital letter; ranges such as ``§3–5`` or ``§5–§6``
    cite every section in between) has no Markdown heading containing ``§X`` in that document.

It also fails if anything in the project mentions the internal design folder (the team's notes
outside the repository): the project must stand on its own documents.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What is scanned for references to Markdown documents (folders are searched recursively).
SCANNED = ("ssvi_lite", "notebooks", "README.md", "docs", "data/README.md", "scripts", "benchmarks")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".ipynb", ".toml", ".yml", ".yaml", ".cfg", ".json",
                 ".csv", ".sh", ".ini", ".rst"}
DOC_FOLDERS = ("docs", ".")  # where a bare document name is looked up, in this order

# Folders that are not part of the project (tool caches, environments, run outputs).
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis",
                ".ruff_cache", ".ipynb_checkpoints", "runs", "build", "dist", "node_modules",
                ".whl", ".gl"}
MAX_BYTES = 2_000_000  # larger files are data (dataset archives, caches), not project text

# Written in two pieces so that this file does not mention what it forbids.
FORBIDDEN = ("shared" + "/design", ".." + "/shared")

_SECTION = r"§[ \u00a0]?(?:[0-9]+|[A-Z])(?![\w])"
REFERENCE = re.compile(
    r"(?<![\w./\\-])"  # not the tail of a longer name, a path or a URL
    r"(?P<doc>(?:[\w.-]+/)*[\w.-]*\w\.md)(?![\w])"  # method.md, docs/method.md, ../README.md
    r"(?:`?[ \u00a0]*"  # `method.md` §5 (name in backticks)
    r"(?P<sections>" + _SECTION + r"(?:[ \u00a0]*[–-][ \u00a0]*§?[ \u00a0]?(?:[0-9]+|[A-Z])"
    r"(?![\w]))?))?"
)
HEADING_SECTION = re.compile(r"§[ \u00a0]?([0-9]+|[A-Z])(?![\w])")


@dataclass(frozen=True)
class Reference:
    file: str  # the citing file, relative to the repository root
    where: str  # the same, with its line or notebook cell
    text: str  # the reference as written
    doc: str  # the document name or path as written
    sections: tuple[str, ...]  # cited sections, ranges expanded


# ----------------------------------------------------------------------------- reading the project
def _project_files(start: Path) -> list[Path]:
    if start.is_file():
        return [start]
    found = []
    for folder, dirs, files in os.walk(start):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        found += [Path(folder) / name for name in sorted(files)]
    return found


def _read_text(path: Path) -> str | None:
    """The file's text, or None for binary files and data too large to be project text."""
    if path.stat().st_size > MAX_BYTES:
        return None
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        return None
    return raw.decode("utf-8", errors="replace")


Chunk = tuple[str, "int | None", str]  # (file, notebook cell or None, text)


def _chunks(path: Path) -> list[Chunk]:
    """The text pieces of one file: a notebook's cell sources one by one, else the whole file."""
    rel = path.relative_to(ROOT).as_posix()
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return [(rel, i, "".join(cell.get("source", []))) for i, cell in enumerate(cells)]
    text = _read_text(path)
    return [] if text is None else [(rel, None, text)]


def _scanned_chunks() -> list[Chunk]:
    chunks = []
    for entry in SCANNED:
        start = ROOT / entry
        if not start.exists():
            continue
        for path in _project_files(start):
            if path.suffix in TEXT_SUFFIXES or path.suffix == "":
                chunks += _chunks(path)
    return chunks


# ----------------------------------------------------------------------------- references
def _expand(first: str, last: str) -> tuple[str, ...]:
    """§3–5 → 3, 4, 5; §A–C → A, B, C; a backwards or mixed range keeps its two ends."""
    if first.isdigit() and last.isdigit() and int(first) <= int(last):
        return tuple(str(n) for n in range(int(first), int(last) + 1))
    if first.isalpha() and last.isalpha() and first <= last:
        return tuple(chr(c) for c in range(ord(first), ord(last) + 1))
    return (first, last)


def _sections(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    ends = re.findall(r"(?:[0-9]+|[A-Z])(?![\w])", text.replace("§", " "))
    return _expand(ends[0], ends[-1]) if len(ends) == 2 else tuple(ends)


def find_references(chunks: list[Chunk]) -> list[Reference]:
    refs = []
    for file, cell, text in chunks:
        for match in REFERENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{file}:{line}" if cell is None else f"{file} (cell {cell}, line {line})"
            written = " ".join(filter(None, (match.group("doc"), match.group("sections"))))
            refs.append(Reference(file, where, written, match.group("doc"),
                                  _sections(match.group("sections"))))
    return refs


def _markdown_files() -> dict[str, Path]:
    """Every .md file of the repository by its exact, case-sensitive relative path."""
    return {p.relative_to(ROOT).as_posix(): p for p in _project_files(ROOT) if p.suffix == ".md"}


def resolve(ref: Reference, documents: dict[str, Path]) -> Path | None:
    """The document a reference names, or None if the repository does not have it."""
    doc = ref.doc
    if doc.startswith(("./", "../")):
        target = os.path.normpath(Path(ref.file).parent.joinpath(doc).as_posix())
        return documents.get(Path(target).as_posix())
    if "/" in doc:
        return documents.get(doc)
    for folder in DOC_FOLDERS:
        key = doc if folder == "." else f"{folder}/{doc}"
        if key in documents:
            return documents[key]
    return None


def heading_sections(path: Path) -> set[str]:
    """The §X labels that appear in the Markdown headings of ``path`` (outside code blocks)."""
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r" {0,3}#{1,6}\s", line):
            found.update(HEADING_SECTION.findall(line))
    return found


def _case_hint(doc: str, documents: dict[str, Path]) -> str:
    name = doc.rsplit("/", 1)[-1].lower()
    same = sorted(k for k in documents if k.rsplit("/", 1)[-1].lower() == name)
    return f" (did you mean {' or '.join(same)}? names are case-sensitive)" if same else ""


def dangling_references() -> list[tuple[Reference, str]]:
    """Every reference that leads nowhere, with the reason."""
    documents = _markdown_files()
    sections: dict[Path, set[str]] = {}
    bad = []
    for ref in find_references(_scanned_chunks()):
        target = resolve(ref, documents)
        if target is None:
            where = "from the repository root" if "/" in ref.doc else "in docs/ or the root"
            bad.append((ref, f"no file {ref.doc} {where}{_case_hint(ref.doc, documents)}"))
            continue
        if target not in sections:
            sections[target] = heading_sections(target)
        missing = [s for s in ref.sections if s not in sections[target]]
        if missing:
            rel = target.relative_to(ROOT).as_posix()
            bad.append((ref, f"{rel} has no heading §{', §'.join(missing)}"))
    return bad


def _summary(bad: list[tuple[Reference, str]]) -> str:
    counts = Counter(ref.doc for ref, _ in bad)
    lines = [f"{len(bad)} dangling reference(s) to Markdown documents "
             f"({', '.join(f'{doc}: {n}' for doc, n in counts.most_common())}):"]
    width = max(len(ref.where) for ref, _ in bad)
    lines += [f"  {ref.where:<{width}}  {ref.text!r}: {why}" for ref, why in bad]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the tests
def test_every_markdown_reference_resolves() -> None:
    bad = dangling_references()
    if bad:
        pytest.fail(_summary(bad), pytrace=False)


def test_nothing_points_at_the_internal_design_notes() -> None:
    hits = []
    for path in _project_files(ROOT):
        text = _read_text(path)
        if text is None:
            continue
        for needle in FORBIDDEN:
            for match in re.finditer(re.escape(needle), text):
                line = text.count("\n", 0, match.start()) + 1
                hits.append(f"  {path.relative_to(ROOT).as_posix()}:{line}  mentions {needle!r}")
    if hits:
        pytest.fail("the project must not cite the team's internal notes; write what a reader "
                    "needs into docs/ instead:\n" + "\n".join(hits), pytrace=False)


def test_the_reference_finder_reads_the_forms_the_project_uses() -> None:
    text = ("see method.md §8; (method.md §3–5) `method.md` §5–§6, docs/method.md §1, "
            "seed_systems.md §D; hashlib.md5(x), f.md5, https://x.org/a/README.md, Method.md §7, "
            "method.md's symbols")
    refs = find_references([("example.py", None, text)])
    assert [(r.doc, r.sections) for r in refs] == [
        ("method.md", ("8",)), ("method.md", ("3", "4", "5")), ("method.md", ("5", "6")),
        ("docs/method.md", ("1",)), ("seed_systems.md", ("D",)), ("Method.md", ("7",)),
        ("method.md", ()),
    ]
