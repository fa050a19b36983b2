"""Decode the real datasets' file formats into numpy arrays (no layouts, no caching: see ``data``).

Notebook 01_dense_vi introduces the loaders that call these readers (``data.load_dataset``).
Formats (as each format's publishers describe them):

- MNIST / Fashion-MNIST **IDX** (:func:`read_idx`, ``.gz`` accepted): a big-endian header
  ``00 00 <dtype> <ndim>``, then ndim int32 sizes, then the data; images have magic 2051
  (0x00000803: count, rows, cols, uint8 pixels), labels 2049 (0x00000801: count, uint8).
- **CIFAR binary** (:func:`read_cifar_binary`): records of 1 label byte (CIFAR-10) or 1 coarse + 1
  fine label byte (CIFAR-100), then 3072 pixel bytes: the R, G, B planes of 32×32.
- **CIFAR python** (:func:`read_cifar_python`): pickled dicts with ``data`` (N×3072 uint8) and
  ``labels`` / ``fine_labels``, read through a restricted unpickler that builds only dicts, lists,
  strings, bytes and numpy arrays.
- **SVHN** ``*_32x32.mat`` (:func:`read_svhn_mat`): MATLAB X of shape 32×32×3×N and y in 1..10,
  where 10 means digit 0.

:func:`read_idx` returns the array as stored (native byte order); the CIFAR and SVHN readers
return images uint8 (N, 3, 32, 32) and labels int64 (N,). A bad file raises ValueError naming the
path and what was expected.

Sizes are bounded by the formats before anything is allocated: no file (after gunzip) may exceed
:data:`MAX_FILE_BYTES` (the largest official file, CIFAR-100's train batch, is 154 MB); an IDX
file must hold exactly the bytes its header declares; an array in a CIFAR pickle may not exceed a
CIFAR batch (:data:`MAX_PICKLE_ARRAY_BYTES`) and may hold no Python objects; an SVHN file may hold
at most :data:`MAX_SVHN_IMAGES` images.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MAX_FILE_BYTES = 256 * 2**20  # any source file, after gunzip
MAX_PICKLE_ARRAY_BYTES = 50_000 * 3072  # the largest array of a CIFAR python batch (CIFAR-100)
MAX_SVHN_IMAGES = 700_000  # SVHN's largest file ("extra") holds 531,131


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (gunzipped for ``.gz``), at most :data:`MAX_FILE_BYTES`."""
    too_big = ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes, more than any file of "
                         "the supported datasets holds")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise too_big
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            out = fh.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip file ({err})") from err
    if len(out) > MAX_FILE_BYTES:
        raise too_big
    return out


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` accepted): big-endian header ``00 00 <dtype> <ndim>``, ndim int32
    sizes, then the data. MNIST images have magic 2051 (0x0803), labels 2049 (0x0801)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: wrong magic number 0x{raw[:4].hex()}, not an IDX file (MNIST "
                         "images start with 2051 = 0x00000803, labels with 2049 = 0x00000801)")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(raw) != expected:
        raise ValueError(f"{path}: truncated or padded IDX file: header says shape {dims} = "
                         f"{expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_cifar_binary(path: str | os.PathLike, n_label_bytes: int = 1) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Read a CIFAR binary batch: records of ``n_label_bytes`` label bytes (CIFAR-10: 1; CIFAR-100:
    coarse + fine = 2, the fine label is returned) + 3072 pixel bytes (R, G, B planes of 32×32).
    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    path = Path(path)
    if n_label_bytes not in (1, 2):
        raise ValueError(f"n_label_bytes={n_label_bytes!r}: CIFAR-10 uses 1, CIFAR-100 uses 2")
    raw, record = _read_bytes(path), n_label_bytes + 3072
    if not raw or len(raw) % record:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {record}-byte records "
                         f"({n_label_bytes} label byte(s) + 3072 pixels): truncated or wrong file")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)  # (N, record)
    images = rows[:, n_label_bytes:].reshape(-1, 3, 32, 32).copy()  # (N, 3, 32, 32)
    return images, rows[:, n_label_bytes - 1].astype(np.int64)


_RECONSTRUCT = np.arange(1).__reduce__()[0]  # numpy's array-rebuilding function


class _CheckedArray(np.ndarray):
    """What the unpickler builds arrays as: their state (shape, dtype) is checked before any
    memory is set aside; object arrays and arrays larger than a CIFAR batch are refused."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"unexpected numpy array state {type(state).__name__}")
        _check_array_size(*state[-4:-2])  # (version,) shape, dtype, is_fortran, data
        super().__setstate__(state)


def _check_array_size(shape: Any, dtype: Any) -> None:
    dtype = np.dtype(dtype)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    if dtype.hasobject:
        raise pickle.UnpicklingError("arrays of Python objects are refused")
    if math.prod(shape) * dtype.itemsize > MAX_PICKLE_ARRAY_BYTES:
        raise pickle.UnpicklingError(f"an array of shape {shape} × {dtype} is larger than any "
                                     f"CIFAR batch ({MAX_PICKLE_ARRAY_BYTES} bytes)")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array rebuilder, bounded: plain arrays only, of at most a CIFAR batch's size."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build {subtype!r}")
    _check_array_size(shape, dtype)
    return _RECONSTRUCT(_CheckedArray, shape, dtype)


_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): __import__("codecs").encode}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts/lists/str/bytes/numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return _PICKLE_ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(path: Path) -> Any:
    raw = _read_bytes(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, RecursionError, OverflowError) as err:
        raise ValueError(f"{path}: not a safe CIFAR python pickle ({err}); only dicts, lists, "
                         "strings, bytes and numpy arrays are allowed") from err


def read_cifar_python(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR python batch (a pickled dict with ``data`` N×3072 uint8 and ``labels`` or
    ``fine_labels``) through a restricted unpickler. Returns uint8 (N, 3, 32, 32), int64 (N,)."""
    path = Path(path)
    batch = _unpickle(path)
    key = "fine_labels" if isinstance(batch, dict) and "fine_labels" in batch else "labels"
    if not isinstance(batch, dict) or "data" not in batch or key not in batch:
        raise ValueError(f"{path}: expected a dict with 'data' and 'labels'/'fine_labels'")
    data, labels = batch["data"], _int_labels(path, batch[key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be a uint8 array, got "
                         f"{getattr(data, 'dtype', type(data).__name__)}")
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: data of shape {data.shape} does not match {len(labels)} labels"
                         " × 3072 pixels")
    return np.asarray(data).reshape(-1, 3, 32, 32), labels  # (N, 3, 32, 32)


def _int_labels(path: Path, labels: Any) -> np.ndarray:
    """A flat list (or 1-D integer array) of labels as int64; ValueError naming ``path``."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if isinstance(labels, list) and all(type(v) is int for v in labels):
        return np.array(labels, dtype=np.int64)
    raise ValueError(f"{path}: the labels must be a flat list of integers")


def read_cifar_meta(path: str | os.PathLike) -> list[str]:
    """The fine class names of a CIFAR-100 python ``meta`` file (a pickled dict with
    ``fine_label_names``: a list of 100 strings), through the restricted unpickler."""
    path = Path(path)
    meta = _unpickle(path)
    names = meta.get("fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"{path}: expected a dict with 'fine_label_names', a list of strings")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN ``*_32x32.mat``: X 32×32×3×N, y 1..10 (10 means digit 0 → label 0).
    Returns uint8 (N, 3, 32, 32), int64 (N,)."""
    import scipy.io

    path = Path(path)
    try:
        _check_svhn_sizes(path, dict((n, s) for n, s, _ in scipy.io.whosmat(path)))
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    except Exception as err:  # scipy raises many types for a bad file
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: expected X of shape 32×32×3×N and y, got keys {sorted(mat)}")
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) != x.shape[3]:
        raise ValueError(f"{path}: {len(y)} labels for {x.shape[3]} images")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise ValueError(f"{path}: SVHN labels must lie in 1..10, found {y.min()}..{y.max()}")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y % 10  # (N, 3, 32, 32)


def _check_svhn_sizes(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Before loading: X declared 32×32×3×N and y N values, N ≤ :data:`MAX_SVHN_IMAGES`."""
    x, y = shapes.get("X"), shapes.get("y")
    if x is None or y is None or len(x) != 4 or tuple(x[:3]) != (32, 32, 3):
        raise ValueError(f"{path}: expected X of shape 32×32×3×N and y, got {shapes}")
    if x[3] > MAX_SVHN_IMAGES or math.prod(y) > MAX_SVHN_IMAGES:
        raise ValueError(f"{path}: declares {x[3]} images / {math.prod(y)} labels, more than "
                         f"any SVHN file ({MAX_SVHN_IMAGES})")
