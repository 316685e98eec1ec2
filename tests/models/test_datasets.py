from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from models import DatasetError, load_dataset, synthetic_dataset
from models.datasets import read_idx


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


def make_fashion_dir(root: Path, n: int = 12, *, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx(tmp_path: Path, gz: bool) -> None:
    images, labels = make_fashion_dir(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", "test", tmp_path)
    assert ds.images.shape == (12, 1, 28, 28)
    assert np.array_equal(ds.images[:, 0], images)
    assert np.array_equal(ds.labels, labels.astype(np.int64))
    x = ds.normalize(ds.images[:2])
    assert x.dtype.is_floating_point and x.shape == (2, 1, 28, 28)


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", tmp_path / "nope")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("fashion-mnist", "test", tmp_path)


def test_malformed_idx(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DatasetError, match="not an IDX"):
        read_idx(bad)
    write_idx(bad, np.zeros((4, 2, 2)))
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="header promises"):
        read_idx(bad)
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="damaged gzip"):
        read_idx(bad)


def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with path.open("wb") as fh:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"a"] * n}, fh)
    return data, labels


def test_cifar10_python_batches(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        write_cifar_batch(root / f"data_batch_{i}", 4, i)
    data, labels = write_cifar_batch(root / "test_batch", 5, 9)
    test = load_dataset("cifar10", "test", tmp_path)
    assert test.images.shape == (5, 3, 32, 32)
    assert np.array_equal(test.images.reshape(5, -1), data)
    assert test.labels.tolist() == labels
    assert len(load_dataset("cifar10", "train", root)) == 20


def test_cifar10_refuses_code_in_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match=r"refusing to load builtins\.print"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="needs a data directory"):
        load_dataset("cifar10", "test")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a valid CIFAR-10"):
        load_dataset("cifar10", "test", tmp_path)


def test_synthetic_and_unknown() -> None:
    ds = synthetic_dataset(n=40, seed=2)
    assert ds.images.dtype == np.uint8 and len(ds) == 40
    assert np.array_equal(ds.images, synthetic_dataset(n=40, seed=2).images)
    assert len(ds.subset(10)) == 10
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("imagenet")


def test_cifar10_download_extracts_only_the_batches(tmp_path: Path) -> None:
    import hashlib
    import io
    import tarfile

    from models.datasets import download_cifar10

    src = tmp_path / "src"
    src.mkdir()
    for i in range(1, 6):
        write_cifar_batch(src / f"data_batch_{i}", 2, i)
    write_cifar_batch(src / "test_batch", 3, 9)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        evil = tarfile.TarInfo("../../escaped")  # a path outside the target must not be written
        tar.addfile(evil, io.BytesIO(b""))
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "data"
    url = archive.as_uri()
    out = download_cifar10(dest, url=url, md5=hashlib.md5(archive.read_bytes()).hexdigest())
    assert len(load_dataset("cifar10", "test", out)) == 3
    assert len(load_dataset("cifar10", "train", dest)) == 10
    assert not (tmp_path / "escaped").exists()
    with pytest.raises(DatasetError, match="wrong checksum"):
        download_cifar10(tmp_path / "d2", url=url, md5="0" * 32)
    with pytest.raises(DatasetError, match="cannot download"):
        download_cifar10(tmp_path / "d3", url=(tmp_path / "missing.tar.gz").as_uri())
