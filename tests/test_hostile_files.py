"""Hostile files: broken data caches heal with a warning, readers bound sizes by their format and
name the file in every error, damaged checkpoints are refused with one line and left untouched,
and report counts each run once without mixing configurations (README "What the kit promises";
the command line and the library are in test_hostile.py)."""
from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import re
import shutil
import struct
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
from conftest import cifar_images, cifar_records, mnist_like, write_idx

from ssvi_lite import checkpoint, data, datafiles, report
from ssvi_lite.cli import main
from ssvi_lite.config import config_id, make_config, run_id

TINY = ["--epochs", "1", "--n-train", "64", "--hidden", "8"]


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w')",))


# ----------------------------------------------------------------------------- data files
@pytest.fixture
def mnist_root(tmp_path):
    for prefix, n in (("train", 5), ("t10k", 2)):
        x, y = mnist_like(n)
        write_idx(tmp_path / "mnist" / f"{prefix}-images-idx3-ubyte", x)
        write_idx(tmp_path / "mnist" / f"{prefix}-labels-idx1-ubyte", y)
    return tmp_path


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _lying_npz(good: bytes) -> bytes:
    """The cache with x_train's header claiming 10⁹ images (its data left as it was)."""
    src, buf = zipfile.ZipFile(io.BytesIO(good)), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == "x_train.npy":
                raw = raw.replace(b"(50, 1, 28, 28)", b"(1000000000, 1, 28, 28)")
            out.writestr(info.filename, raw)
    return buf.getvalue()


def _changed(key, fn):
    return lambda good: _npz(**{**dict(np.load(io.BytesIO(good))),
                                key: fn(np.load(io.BytesIO(good))[key])})


CACHE_DAMAGE = [  # (name, good cache bytes -> damaged bytes, words of the warning)
    ("truncated", lambda g: g[: len(g) // 2], "not an .npz"), ("empty", lambda g: b"", "not an"),
    ("garbage", lambda g: b"garbage" * 9, "not an .npz"), ("lying header", _lying_npz, "declares"),
    ("labels", _changed("y_train", lambda y: y + 20), "label out of range"),
    ("8x8", _changed("x_train", lambda x: x[:, :, :8, :8].copy()), "(1, 8, 8)"),
    ("float labels", _changed("y_train", lambda y: y.astype(np.float32)), "float32"),
    ("short labels", _changed("y_test", lambda y: y[:3]), "3 labels"),
    ("classes", _changed("classes", lambda c: c[:4]), "4 class names"),
    ("no images", _changed("x_test", lambda x: x[:0]), "images"),
    ("missing", lambda g: _npz(**{k: v for k, v in np.load(io.BytesIO(g)).items()
                                  if k != "classes"}), "lacks classes"),
]


@pytest.mark.parametrize("name, damage, words", CACHE_DAMAGE, ids=[c[0] for c in CACHE_DAMAGE])
def test_a_broken_cache_is_rebuilt_with_a_warning(name, damage, words, mnist_root) -> None:
    first = data.load_dataset("mnist", root=str(mnist_root))
    cache = mnist_root / "cache" / "mnist.npz"
    cache.write_bytes(damage(cache.read_bytes()))
    with pytest.warns(UserWarning, match=re.escape(words)):
        again = data.load_dataset("mnist", root=str(mnist_root))
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    with np.load(cache) as z:  # rewritten whole
        assert len(z["y_train"]) == 50


def _idx(dims: tuple, body: bytes = b"", magic: int = 0x0803) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + body


def _write(tmp_path, name: str, raw: bytes):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


READERS = [  # (name, file name, bytes, reader, words)
    ("idx magic", "a-idx3", b"\x12\x34\x08\x03" + b"\0" * 20, datafiles.read_idx, "magic"),
    ("idx header", "b-idx3", b"\0\0\x08\x03\0\0", datafiles.read_idx, "truncated IDX header"),
    ("idx short", "c-idx3", _idx((2, 2, 2), b"\0" * 7), datafiles.read_idx, "has 23"),
    ("idx padded", "d-idx3", _idx((1, 2, 2), b"\0" * 9), datafiles.read_idx, "padded"),
    ("idx overflow", "e-idx3", _idx((2**31, 2**31, 2**31), b"\0"), datafiles.read_idx,
     "2147483648"),
    ("idx gzip", "f-idx3.gz", b"\x1f\x8bnot gzip", datafiles.read_idx, "corrupt gzip"),
    ("cifar empty", "g.bin", b"", datafiles.read_cifar_binary, "0 bytes"),
    ("cifar cut", "h.bin", b"\0" * 3000, datafiles.read_cifar_binary, "3000 bytes"),
    ("pickle cut", "i", pickle.dumps({"data": 1})[:5], datafiles.read_cifar_python, "pickle"),
    ("pickle list", "j", pickle.dumps([1, 2]), datafiles.read_cifar_python, "expected a dict"),
    ("pickle data", "k", pickle.dumps({"data": [[0] * 3072], "labels": [0]}),
     datafiles.read_cifar_python, "uint8 array"),
    ("pickle float", "l", pickle.dumps({"data": np.zeros((1, 3072)), "labels": [0]}),
     datafiles.read_cifar_python, "float64"),
    ("pickle labels", "m", pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                         "labels": [[0] * 9] * 2}),
     datafiles.read_cifar_python, "flat list of integers"),
    ("pickle count", "n", pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}),
     datafiles.read_cifar_python, "1 labels"),
    ("pickle objects", "o", pickle.dumps({"data": np.array([1, "x"], object), "labels": [0]}),
     datafiles.read_cifar_python, "Python objects"),
    ("pickle global", "p", pickle.dumps({"data": _Exploit(), "labels": [0]}),
     datafiles.read_cifar_python, "refusing to load global"),
    ("meta list", "q", pickle.dumps(["a"]), datafiles.read_cifar_meta, "fine_label_names"),
    ("meta names", "r", pickle.dumps({"fine_label_names": [1, 2]}), datafiles.read_cifar_meta,
     "list of strings"),
    ("svhn garbage", "s.mat", b"MATLAB garbage" * 20, datafiles.read_svhn_mat, "s.mat"),
]


@pytest.mark.parametrize("name, file, raw, reader, words", READERS, ids=[r[0] for r in READERS])
def test_readers_refuse_bad_files_naming_them(name, file, raw, reader, words, tmp_path) -> None:
    path = _write(tmp_path, file, raw)
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        reader(path)
    assert str(path) in str(info.value)


def _bomb() -> bytes:
    """155 bytes asking numpy for a 20-GB array through its own (allowed) rebuilder."""
    class Huge:
        def __reduce__(self):
            return (np.arange(1).__reduce__()[0], (np.ndarray, (20_000_000_000,), b"b"))
    return pickle.dumps({"data": Huge(), "labels": [0]}, protocol=2)


def test_a_pickle_asking_for_gigabytes_is_refused_before_allocating(tmp_path) -> None:
    path = _write(tmp_path, "test_batch", _bomb())
    assert len(path.read_bytes()) < 200
    with pytest.raises(ValueError, match="larger than any CIFAR batch"):
        datafiles.read_cifar_python(path)


def test_sizes_are_bounded_before_reading(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(datafiles, "MAX_FILE_BYTES", 100)
    big = _write(tmp_path, "x.bin", b"\0" * 3073)
    with pytest.raises(ValueError, match=r"x\.bin: larger than 100 bytes"):
        datafiles.read_cifar_binary(big)
    bomb = _write(tmp_path, "y-idx3.gz", gzip.compress(b"\0" * 10_000))
    with pytest.raises(ValueError, match=r"y-idx3\.gz: larger than"):
        datafiles.read_idx(bomb)
    monkeypatch.setattr(datafiles, "MAX_SVHN_IMAGES", 3)
    scipy.io.savemat(tmp_path / "t.mat", {"X": np.zeros((32, 32, 3, 5), np.uint8),
                                          "y": np.ones((5, 1), np.uint8)})
    with pytest.raises(ValueError, match=r"t\.mat: declares 5 images"):
        datafiles.read_svhn_mat(tmp_path / "t.mat")


SOURCE = [  # (name, change of the MNIST train files, words)
    ("no images", (np.zeros((0, 28, 28)), np.zeros(0)), "holds no images"),
    ("8x8", (np.zeros((10, 8, 8)), np.arange(10)), "(1, 8, 8)"),
    ("label 10", (np.zeros((2, 28, 28)), np.array([1, 10])), "label out of range"),
    ("mismatch", (np.zeros((3, 28, 28)), np.arange(2)), "label count mismatch"),
]


@pytest.mark.parametrize("name, arrays, words", SOURCE, ids=[s[0] for s in SOURCE])
def test_bad_source_files_name_the_file(name, arrays, words, mnist_root) -> None:
    write_idx(mnist_root / "mnist" / "train-images-idx3-ubyte", arrays[0])
    write_idx(mnist_root / "mnist" / "train-labels-idx1-ubyte", arrays[1])
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        data.load_dataset("mnist", root=str(mnist_root))
    assert "train-" in str(info.value)


def test_cifar100_names_must_number_100(tmp_path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    x, labels = cifar_images(100), np.arange(100)
    for name in ("train.bin", "test.bin"):
        (folder / name).write_bytes(cifar_records(x, labels % 20, labels))
    (folder / "fine_label_names.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match=r"fine_label_names\.txt: 3 class names, expected 100"):
        data.load_dataset("cifar100", root=str(tmp_path))


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "run.pt"
    assert main(["train", *TINY, "--no-progress", "--checkpoint", str(path)]) == 0
    return path


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w')",))


def _edit(key, *path):
    def change(state):
        target = state
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = key(target[path[-1]]) if callable(key) else key
    return change


TAMPERED = [  # (name, change of the state or raw bytes, words)
    ("garbage", b"not a checkpoint", ["not a readable"]), ("empty", b"", ["not a readable"]),
    ("exploit", pickle.dumps(_Exploit()), ["not a readable"]),
    ("format", _edit("v0", "format"), ["not an ssvi_lite checkpoint"]),
    ("no rng", lambda s: s.pop("rng"), ["lacks rng"]),
    ("epoch -6", _edit(-6, "progress", "stage_epoch"), ["stage_epoch=-6"]),
    ("stage 9", _edit(9, "progress", "stage"), ["stage 9"]),
    ("rows", _edit("x", "progress", "rows"), ["history rows"]),
    ("extra", _edit(1, "progress", "foo"), ["foo"]),
    ("flops nan", _edit(math.nan, "progress", "flops"), ["flops=nan"]),
    ("best", _edit(("x", 1), "progress", "best"), ["best-epoch"]),
    ("shape", _edit(torch.zeros(3), "model", "net.1.mu"), ["net.1.mu", "size mismatch"]),
    ("missing", lambda s: s["model"].pop("net.1.mu"), ["net.1.mu"]),
    ("unexpected", _edit(torch.zeros(1), "model", "extra.w"), ["extra.w"]),
    ("float mask", _edit(lambda m: m.float() * 0.5, "model", "net.1.mask"), ["mask", "bool"]),
    ("rng", _edit("x", "rng", "torch"), ["random-number"]),
    ("config", _edit(7, "config", "epochs"), ["epochs: checkpoint 7"]),
]


@pytest.mark.parametrize("name, change, words", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_damaged_checkpoint_is_refused(name, change, words, saved_run, tmp_path, capsys,
                                         monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path, out = tmp_path / "c.pt", tmp_path / "row.json"
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        state = torch.load(saved_run, weights_only=True)
        change(state)
        torch.save(state, path)
    before = path.read_bytes()
    argv = ["train", *TINY, "--no-progress", "--checkpoint", str(path), "--resume", "--json",
            str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    assert all(w in err for w in words), err
    assert path.read_bytes() == before and not out.exists() and not (tmp_path / "PWNED").exists()


def test_optimizer_state_of_other_shapes_is_refused() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, 2))])
    state = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(5)}},
             "param_groups": []}
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 is \(5,\)"):
        checkpoint.check_optimizer(state, opt)
    with pytest.raises(ValueError, match="parameter 7"):
        checkpoint.check_optimizer({"state": {7: {}}, "param_groups": []}, opt)


# ----------------------------------------------------------------------------- results files
def _run_row(seed: int, epochs: int, accuracy: float) -> dict:
    cfg = make_config("kit", seed=seed, epochs=epochs)
    return {"run_id": run_id(cfg), "config_id": config_id(cfg),
            "method": "ssvi", "removal": "snr_abs", "addition": "grad", "dataset": "mnist5k",
            "model": "mlp", "target_density": 0.1, "density": 0.1, "accuracy": accuracy,
            "seed": seed, "epochs": epochs, "config": cfg.to_dict()}


def test_report_counts_each_run_once_and_never_mixes_configurations(tmp_path, capsys) -> None:
    rows = [_run_row(0, 30, 0.9), _run_row(1, 30, 0.92), _run_row(2, 30, 0.91),
            _run_row(3, 1, 0.3)]
    for i, row in enumerate(rows):
        (tmp_path / f"r{i}.json").write_text(json.dumps(row))
    shutil.copy(tmp_path / "r0.json", tmp_path / "r0_copy.json")
    (tmp_path / "junk.json").write_text("[1, 2, {\"x\": 1}")
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    table = report.paper_table(report.collect(tmp_path)).set_index("Method")
    assert table.loc["ssvi (snr_abs) [epochs=30]", "Seeds"] == 3
    assert table.loc["ssvi (snr_abs) [epochs=1]", "Accuracy (%)"] == "30.00"
    assert table.loc["ssvi (snr_abs) [epochs=30]", "Accuracy (%)"] == "91.00 ± 0.58"
    assert "4 runs in 2 configurations" in text and "r0_copy.json (same run as" in text
