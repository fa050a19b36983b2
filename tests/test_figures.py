"""scripts/make_figures.py: every notebook picture is drawn (fast mode) into a folder as a valid,
small PNG, atomically; bad figure names fail with a clear message; the committed README pictures
are small PNGs."""
from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 150_000


def _load_script():
    path = ROOT / "scripts" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_figures():
    return _load_script()


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def fast_figures(make_figures, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("figures")
    return out, make_figures.make_figures(out, fast=True)


def test_fast_mode_writes_one_valid_png_per_notebook(make_figures, fast_figures) -> None:
    out, written = fast_figures
    assert [p.name for p in written] == ["01_entropy_map.png", "02_masks.png", "03_score_plane.png",
                                         "04_swap_schedule.png", "05_reliability.png", "06_zoo.png"]
    for path in written:
        width, height = _png_size(path)
        assert 300 <= width <= 2000 and 200 <= height <= 1200, (path.name, width, height)
        assert path.stat().st_size < MAX_BYTES, path.name
        pixels = mpimg.imread(path)  # decodes the whole file
        assert pixels.shape[:2] == (height, width)
        assert pixels.std() > 0.01, f"{path.name} looks blank"
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


def test_only_selects_figures_and_unknown_names_fail(make_figures, tmp_path) -> None:
    written = make_figures.make_figures(tmp_path, fast=True, only=["03"])
    assert [p.name for p in written] == ["03_score_plane.png"]
    with pytest.raises(ValueError, match=r"unknown figure\(s\) \['99'\].*01, 02, 03, 04, 05, 06"):
        make_figures.make_figures(tmp_path, fast=True, only=["99"])
    with pytest.raises(SystemExit):
        make_figures.main(["--only", "99", "--out", str(tmp_path)])


def test_committed_readme_figures_are_small_pngs(make_figures) -> None:
    folder = ROOT / "docs" / "figures"
    names = ["01_entropy_map.png", "02_masks.png", "03_score_plane.png", "04_swap_schedule.png",
             "05_reliability.png", "06_zoo.png"]
    missing = [n for n in names if not (folder / n).is_file()]
    assert not missing, f"run `make figures` to regenerate {missing}"
    for name in names:
        _png_size(folder / name)
        assert (folder / name).stat().st_size < MAX_BYTES, name

