"""ssvi_lite.fetch without the network: ``urllib.request.urlopen`` is replaced by a fake server
that serves small files written here; checksums, truncation, mirrors, archives and the offline
failure are checked against hashlib and the data loader."""
from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ssvi_lite import data, fetch
from ssvi_lite.fetch import FETCH_SOURCES, RemoteFile

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_gz(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def mnist_payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    tr, te = np.repeat(np.arange(10), 3), np.arange(10)
    arrays = (rng.integers(0, 256, (30, 28, 28)), tr, rng.integers(0, 256, (10, 28, 28)), te)
    return {n: idx_gz(a) for n, a in zip(IDX_NAMES, arrays)}


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


class FakeResponse(io.BytesIO):
    def __init__(self, raw: bytes, announced: int | None = None) -> None:
        super().__init__(raw)
        self.headers = {"Content-Length": str(len(raw) if announced is None else announced)}


class FakeServer:
    """Stands in for urlopen: url -> bytes, (bytes, announced length) or an exception."""

    def __init__(self, routes: dict) -> None:
        self.routes, self.calls = routes, []

    def __call__(self, url: str, timeout: float | None = None) -> FakeResponse:
        self.calls.append(url)
        answer = self.routes.get(url, urllib.error.HTTPError(url, 404, "Not Found", {}, None))
        if isinstance(answer, BaseException):
            raise answer
        return FakeResponse(*answer) if isinstance(answer, tuple) else FakeResponse(answer)


@pytest.fixture
def fake_mnist(monkeypatch):
    """Point FETCH_SOURCES['mnist'] at fake URLs with the payloads' true MD5s."""
    payloads = mnist_payloads()
    sources = tuple(RemoteFile(n, (f"http://mirror-a/{n}", f"http://mirror-b/{n}"), md5(raw))
                    for n, raw in payloads.items())
    monkeypatch.setitem(FETCH_SOURCES, "mnist", sources)

    def serve(routes: dict) -> FakeServer:
        server = FakeServer(routes)
        monkeypatch.setattr(urllib.request, "urlopen", server)
        return server

    return payloads, serve


def test_published_checksums():
    expected_mnist = ["f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                      "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"]
    assert [f.md5 for f in FETCH_SOURCES["mnist"]] == expected_mnist  # published MD5s
    assert set(FETCH_SOURCES) == set(data.DATASETS) - set(data.EMBEDDED)
    for files in FETCH_SOURCES.values():
        for f in files:
            assert f.md5 is None or (len(f.md5) == 32 and int(f.md5, 16) >= 0)
            assert f.urls and all(u.startswith(("http://", "https://")) for u in f.urls)


def test_verify_md5(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert fetch.md5_of(path) == hashlib.md5(b"abc" * 1000).hexdigest()
    assert fetch.verify_md5(path, md5(b"abc" * 1000).upper()) and fetch.verify_md5(path, None)
    assert not fetch.verify_md5(path, md5(b"abd")) and not fetch.verify_md5(tmp_path / "x", None)


def test_fetch_good_then_idempotent(tmp_path, fake_mnist):
    payloads, serve = fake_mnist
    server = serve({f"http://mirror-a/{n}": raw for n, raw in payloads.items()})
    folder = fetch.fetch("mnist", tmp_path)
    assert folder == (tmp_path / "mnist").resolve() and len(server.calls) == 4
    assert all((folder / n).read_bytes() == raw for n, raw in payloads.items())
    s = data.load_dataset("mnist", root=str(tmp_path))
    assert s.n_train + len(s.y_val) == 30 and len(s.y_test) == 10
    assert fetch.fetch("mnist", tmp_path) == folder and len(server.calls) == 4  # nothing new


def test_good_file_is_not_downloaded_again(tmp_path, fake_mnist):
    payloads, serve = fake_mnist
    keep = tmp_path / "mnist" / IDX_NAMES[0]
    keep.parent.mkdir()
    keep.write_bytes(payloads[IDX_NAMES[0]])
    stamp = keep.stat().st_mtime_ns
    server = serve({f"http://mirror-a/{n}": raw for n, raw in payloads.items()})
    fetch.fetch("mnist", tmp_path)
    assert server.calls == [f"http://mirror-a/{n}" for n in IDX_NAMES[1:]]
    assert keep.stat().st_mtime_ns == stamp


def test_mirror_fallback(tmp_path, fake_mnist):
    payloads, serve = fake_mnist
    server = serve({f"http://mirror-b/{n}": raw for n, raw in payloads.items()})  # a: 404
    fetch.fetch("mnist", tmp_path)
    assert len(server.calls) == 8 and server.calls[1] == f"http://mirror-b/{IDX_NAMES[0]}"


def _left_behind(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("damage", ["corrupt", "wrong_checksum"])
def test_bad_download_is_rejected_and_removed(tmp_path, fake_mnist, damage):
    payloads, serve = fake_mnist
    name = IDX_NAMES[1]
    raw = payloads[name]
    bad = raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:] if damage == "corrupt" else idx_gz(
        np.zeros(30))
    routes = {f"http://mirror-a/{n}": r for n, r in payloads.items()}
    serve({**routes, f"http://mirror-a/{name}": bad})
    with pytest.raises(ValueError) as info:
        fetch.fetch("mnist", tmp_path)
    msg = str(info.value)
    assert name in msg and md5(raw) in msg and md5(bad) in msg
    assert _left_behind(tmp_path / "mnist") == [IDX_NAMES[0]]  # the good one before it only


def test_truncated_download(tmp_path, fake_mnist):
    payloads, serve = fake_mnist
    raw = payloads[IDX_NAMES[0]]
    serve({f"http://mirror-a/{IDX_NAMES[0]}": (raw[:50], len(raw))})
    with pytest.raises(ValueError, match=f"truncated download, got 50 of {len(raw)} bytes"):
        fetch.fetch("mnist", tmp_path)
    assert _left_behind(tmp_path / "mnist") == []


def test_no_network_fails_fast_with_instructions(tmp_path, monkeypatch):
    server = FakeServer({})
    server.routes = {u: urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
                     for f in FETCH_SOURCES["mnist"] for u in f.urls}
    monkeypatch.setattr(urllib.request, "urlopen", server)
    start = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        fetch.fetch("mnist", tmp_path)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "by hand" in msg and str(tmp_path / "mnist") in msg
    assert FETCH_SOURCES["mnist"][0].urls[0] in msg and FETCH_SOURCES["mnist"][0].md5 in msg
    assert _left_behind(tmp_path / "mnist") == []


def test_hanging_connection_times_out(tmp_path, monkeypatch):
    def hang(url, timeout=None):
        time.sleep(3)
        raise urllib.error.URLError("late")

    monkeypatch.setattr(urllib.request, "urlopen", hang)
    start = time.monotonic()
    with pytest.raises(fetch.FetchError, match="no connection after 0.3 s"):
        fetch.fetch("mnist", tmp_path, timeout=0.3)
    assert time.monotonic() - start < 2  # one mirror only: the hang says the network is down


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


def test_cifar10_archive_is_unpacked_where_data_looks(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    records = b"".join(bytes([i % 10]) + rng.bytes(3072) for i in range(10))  # 10 records
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    archive = _tar_gz({f"cifar-10-batches-bin/{n}": records for n in names})
    monkeypatch.setitem(FETCH_SOURCES, "cifar10", (
        RemoteFile("cifar-10-binary.tar.gz", ("http://t/c10.tgz",), md5(archive), unpack=True),))
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({"http://t/c10.tgz": archive}))
    folder = fetch.fetch("cifar10", tmp_path)
    assert folder == (tmp_path / "cifar10" / "cifar-10-batches-bin").resolve()
    s = data.load_dataset("cifar10", root=str(tmp_path))
    assert s.n_train + len(s.y_val) == 50 and s.x_test.shape == (10, 3, 32, 32)


@pytest.mark.parametrize("members,match", [
    ({"../evil.bin": b"x"}, "unsafe member path"), (None, "cannot unpack")])
def test_bad_archives(tmp_path, monkeypatch, members, match):
    archive = _tar_gz(members) if members else b"\x1f\x8b not really gzip"
    monkeypatch.setitem(FETCH_SOURCES, "cifar10", (
        RemoteFile("cifar-10-binary.tar.gz", ("http://t/c10.tgz",), md5(archive), unpack=True),))
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({"http://t/c10.tgz": archive}))
    with pytest.raises(ValueError, match=match):
        fetch.fetch("cifar10", tmp_path)
    assert not (tmp_path / "evil.bin").exists()


def test_bad_names_and_timeout(tmp_path):
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10, cifar100, svhn"):
        fetch.fetch("imagenet", tmp_path)
    with pytest.raises(ValueError, match="built in"):
        fetch.fetch("mnist5k", tmp_path)
    with pytest.raises(ValueError, match="timeout"):
        fetch.fetch("mnist", tmp_path, timeout=0)


def test_files_already_in_torchvision_layout_are_used(tmp_path, monkeypatch):
    raw_folder = tmp_path / "MNIST" / "raw"
    raw_folder.mkdir(parents=True)
    for name, raw in mnist_payloads().items():
        (raw_folder / name).write_bytes(raw)
    server = FakeServer({})
    monkeypatch.setattr(urllib.request, "urlopen", server)
    assert fetch.fetch("mnist", tmp_path) == raw_folder.resolve() and server.calls == []
    assert fetch.locate_files("mnist", tmp_path)[0] == "idx"
    with pytest.raises(ValueError, match="mnist, fashion_mnist"):
        fetch.locate_files("mnist5k", tmp_path)
