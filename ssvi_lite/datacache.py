"""The real datasets' arrays: decoded from the source files (``datafiles``) and cached, checked.

:func:`real_arrays` returns the official train/test arrays of a real dataset (images uint8
(N, *shape), labels int64 in 0..C−1, C class names), decoded once and kept in
``root/cache/<name>.npz`` with the fingerprint (names, sizes, modification times) of the source
files it was built from.

A cache is trusted only after it is checked: a readable .npz (no pickles), every array present,
each array's declared size within its stored size, the fingerprint of the current source files,
images uint8 of the dataset's shape, as many labels as images, labels in range, C class names.
A cache built from other files is rebuilt quietly; a broken one (truncated, empty, garbage,
wrong shapes or dtypes, labels out of range) with a one-line warning naming the file and the
reason. Decoded source files get the same checks, with errors naming the file.
"""
from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .datafiles import (
    read_cifar_binary,
    read_cifar_meta,
    read_cifar_python,
    read_idx,
    read_svhn_mat,
)
from .fetch import locate_files
from .fileio import atomic_path

KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


class BrokenCache(ValueError):
    """A cache file that fails a check (it is then rebuilt from the source files)."""


# ----------------------------------------------------------------------------- checks
def check_labels(path: Path | str, labels: np.ndarray, n_classes: int) -> None:
    """ValueError naming ``path`` if a label lies outside 0..n_classes−1."""
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{path}: label out of range: found {labels.min()}..{labels.max()}, "
                         f"allowed 0..{n_classes - 1}")


def check_split(where: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...],
                n_classes: int) -> None:
    """ValueError naming ``where`` unless x is uint8 (N ≥ 1, *shape) and y int64 (N,) in range."""
    if x.dtype != np.uint8 or x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{where}: images of shape {tuple(x.shape[1:])} and dtype {x.dtype}; "
                         f"this dataset has uint8 images of shape {tuple(shape)}")
    if len(x) == 0:
        raise ValueError(f"{where}: holds no images")
    if y.dtype != np.int64 or y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{where}: {len(y)} labels ({y.dtype}) for {len(x)} images")
    check_labels(where, y, n_classes)


def check_arrays(arrays: dict[str, np.ndarray], shape: tuple[int, ...], n_classes: int) -> None:
    """Both splits (:func:`check_split`) and the class names of a dataset's arrays."""
    for split in ("train", "test"):
        check_split(f"the {split} split", arrays[f"x_{split}"], arrays[f"y_{split}"], shape,
                    n_classes)
    if arrays["classes"].ndim != 1 or len(arrays["classes"]) != n_classes:
        raise ValueError(f"{arrays['classes'].size} class names for {n_classes} classes")


# ----------------------------------------------------------------------------- decoding
def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected an images file (magic 2051, N×rows×cols uint8)")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected a labels file (magic 2049, N uint8)")
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: label count mismatch: {len(labels)} labels for "
                         f"{len(images)} images in {images_path}")
    check_labels(labels_path, labels.astype(np.int64), 10)
    return images[:, None], labels.astype(np.int64)  # (N, 1, rows, cols)


def _read_split(fmt: str, paths: list[Path], n_classes: int, shape: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray]:
    if fmt == "idx":
        x, y = _read_idx_pair(*paths)
        check_split(str(paths[0]), x, y, shape, n_classes)
        return x, y
    parts = []
    for path in paths:
        if fmt.endswith("_bin"):
            x, y = read_cifar_binary(path, 2 if fmt.startswith("cifar100") else 1)
        else:
            x, y = read_svhn_mat(path) if fmt == "svhn" else read_cifar_python(path)
        check_split(str(path), x, y, shape, n_classes)
        parts.append((x, y))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _class_names(fmt: str, folder: Path, default: list[str]) -> list[str]:
    meta = {"cifar100_bin": "fine_label_names.txt", "cifar100_py": "meta"}.get(fmt)
    if not meta or not (folder / meta).is_file():
        return default
    path = folder / meta
    if fmt.endswith("_bin"):
        try:
            names = [s for s in path.read_text().split() if s]
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not a text file of class names ({err})") from err
    else:
        names = read_cifar_meta(path)
    if len(names) != len(default):
        raise ValueError(f"{path}: {len(names)} class names, expected {len(default)}")
    return names


def fingerprint(fmt: str, paths: list[Path]) -> str:
    """What a cache was built from: the format and each source file's name, size and mtime."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return fmt + "|" + ";".join(f"{n}:{s}:{t}" for n, s, t in stats)


# ----------------------------------------------------------------------------- the cache
def _read_cache(cache: Path, stamp: str) -> dict[str, np.ndarray] | None:
    """The cached arrays; None if built from other files; BrokenCache if unreadable."""
    if not zipfile.is_zipfile(cache):
        raise BrokenCache("not an .npz (zip) archive: empty, truncated or garbage")
    try:
        with np.load(cache, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise BrokenCache("not an .npz archive")
            missing = [k for k in (*KEYS, "fingerprint") if k not in z.files]
            if missing:
                raise BrokenCache(f"lacks {', '.join(missing)}")
            _check_sizes(z)
            if str(z["fingerprint"]) != stamp:
                return None
            return {k: z[k] for k in KEYS}
    except BrokenCache:
        raise
    except (OSError, ValueError, KeyError, EOFError, MemoryError, zipfile.BadZipFile,
            zlib.error) as err:
        raise BrokenCache(f"unreadable ({type(err).__name__}: {err})") from err


def _check_sizes(z: np.lib.npyio.NpzFile) -> None:
    """Each member's declared array size must fit in its stored size (before any allocation)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    for info in z.zip.infolist():
        with z.zip.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in readers:
                raise BrokenCache(f"member {info.filename} has .npy version {version}")
            shape, _, dtype = readers[version](fh)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise BrokenCache(f"member {info.filename} declares {shape} × {dtype}, more than "
                              f"its {info.file_size} bytes")


def load_cache(cache: Path, stamp: str, shape: tuple[int, ...], n_classes: int
               ) -> dict[str, np.ndarray] | None:
    """The checked arrays of ``cache``, or None (no cache, built from other files, or broken: a
    one-line warning names the file and the reason)."""
    if not cache.is_file():
        return None
    try:
        arrays = _read_cache(cache, stamp)
        if arrays is not None:
            check_arrays(arrays, shape, n_classes)
    except ValueError as err:  # BrokenCache included
        warnings.warn(f"data cache {cache} is broken ({err}); rebuilding it from the source files",
                      stacklevel=2)
        return None
    return arrays


def real_arrays(name: str, root: Path, n_classes: int, shape: tuple[int, ...],
                default_classes: list[str]) -> dict[str, np.ndarray]:
    """Decoded official train/test arrays (:data:`KEYS`) of a real dataset, via the checked
    cache."""
    fmt, folder, train_paths, test_paths = locate_files(name, root)
    stamp, cache = fingerprint(fmt, train_paths + test_paths), root / "cache" / f"{name}.npz"
    arrays = load_cache(cache, stamp, shape, n_classes)
    if arrays is not None:
        return arrays
    x_train, y_train = _read_split(fmt, train_paths, n_classes, shape)
    x_test, y_test = _read_split(fmt, test_paths, n_classes, shape)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
              "classes": np.array(_class_names(fmt, folder, default_classes))}
    try:
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, fingerprint=np.array(stamp), **arrays)
    except OSError as err:
        warnings.warn(f"could not write the cache {cache}: {err}", stacklevel=2)
    return arrays
