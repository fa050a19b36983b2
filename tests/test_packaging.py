"""The project's shape: one dependency list, a layered import graph, every notebook under test."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Each module may import only modules listed before it (the README's "Architecture" section).
ORDER = ["fileio", "exercise", "guards", "criteria", "config", "fetch", "datafiles", "datacache",
         "data", "metrics", "layers", "sparse_ops", "sparse", "models", "subspace", "kernels",
         "distributed", "costs", "convergence", "predict", "checkpoint", "loop", "methods",
         "flags", "train", "experiment", "jobs", "engine", "sweep", "report", "plots", "compare",
         "demo", "widgets", "cli", "__main__", "__init__"]
# The one import that runs upwards: config looks the method up in the registry, inside its
# functions, to validate method names and options and to apply a method's defaults.
LAZY_UPWARD = {("config", "methods")}


def _requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {r.replace(" ", "") for r in reqs}


def test_environment_yml_lists_the_same_packages_as_pyproject() -> None:
    text = (ROOT / "environment.yml").read_text().split("- pip:", 1)[1]  # the pip block
    listed = {m.group(1).replace(" ", "") for m in re.finditer(r"^\s+- ([A-Za-z][^\s#]*)$", text,
                                                              re.M)}
    listed = {r for r in listed if not r.startswith(("python", "pip", "-e"))}
    assert listed == _requirements()


def test_torch_range_admits_2_13_and_nothing_is_pinned_exactly() -> None:
    reqs = _requirements()
    torch_req = next(r for r in reqs if r.startswith("torch") and not r.startswith("torchm"))
    assert "==" not in "".join(reqs)
    from packaging.specifiers import SpecifierSet

    assert "2.13.0" in SpecifierSet(torch_req.removeprefix("torch"))


def _module_key(path: Path) -> str:
    """A module's place in ORDER: its file name, or its subpackage's (methods/, plots/)."""
    rel = path.relative_to(ROOT / "ssvi_lite")
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """The ssvi_lite modules (first level below the package) that ``path`` imports."""
    package = ["ssvi_lite", *path.relative_to(ROOT / "ssvi_lite").parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package[:len(package) - node.level + 1] if node.level else []
        full = base + (node.module.split(".") if node.module else [])
        if full[0] == "ssvi_lite":
            found.update(full[1:2] or [a.name for a in node.names])
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "ssvi_lite").rglob("*.py")), ids=lambda p: p.name)
def test_modules_import_only_earlier_modules(path: Path) -> None:
    me = _module_key(path)
    if me == "__init__":
        return
    assert me in ORDER, f"add {me} to ORDER in this test (and to architecture notes)"
    for other in _imports(path) - {me}:
        assert other in ORDER, f"{path.name} imports unknown module {other}"
        if (me, other) in LAZY_UPWARD:
            continue
        assert ORDER.index(other) < ORDER.index(me), f"{path.name} imports {other}, which is later"


@pytest.mark.parametrize("lib, allowed", [("matplotlib", {"plots"}), ("seaborn", {"plots"}),
                                          ("ipywidgets", {"widgets"})])
def test_only_one_module_imports_each_front_end(lib: str, allowed: set[str]) -> None:
    for path in (ROOT / "ssvi_lite").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.level == 0}
        if lib in names:
            assert _module_key(path) in allowed | {"cli"}, f"{path} imports {lib}"


def test_every_notebook_is_run_by_the_test_command() -> None:
    """A notebook that the test command would not collect fails here."""
    makefile = (ROOT / "Makefile").read_text()
    test_line = next(line for line in makefile.splitlines() if "--nbval-lax" in line)
    assert "notebooks" in test_line.split()
    notebooks = sorted(p.relative_to(ROOT) for p in ROOT.rglob("*.ipynb")
                       if not {".venv", ".ipynb_checkpoints", "student"} & set(p.parts))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval-lax",
                           "-p", "no:cacheprovider", "notebooks"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    collected = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    missing = [str(nb) for nb in notebooks if str(nb) not in collected]
    assert not missing, f"notebooks the test command does not run: {missing}"


def test_ci_calls_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
