"""ssvi_lite.fileio: a file appears whole or not at all, with a normal file's permissions."""
from __future__ import annotations

import json
import os

import pytest

from ssvi_lite.fileio import atomic_path, write_json, write_text


def test_written_file_has_the_umask_mode_not_mkstemps_private_one(tmp_path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path = write_json(tmp_path / "out" / "result.json", {"accuracy": 0.9})
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = write_text(tmp_path / "table.csv", "old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text("half a ta")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
