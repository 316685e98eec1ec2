"""Datasets behind one interface: Fashion-MNIST (IDX files), CIFAR-10 (python batches) and a synthetic set.

Every loader returns an :class:`ImageDataset` holding uint8 images (N, C, H, W) and int64 labels — what
a camera would send — so the test node can ship raw bytes and the edge normalizes them itself.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.names import CIFAR10, DATASETS, FASHION_MNIST, SYNTHETIC
from models.errors import DatasetError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist/), "
    "or pass --data-dir DIR holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_HINT = (
    "pass --data-dir DIR pointing at the extracted `cifar-10-batches-py` folder (data_batch_1..5, "
    f"test_batch) from {CIFAR10_URL}, or fetch it with `python -m harness train --dataset cifar10 --download`"
)

# Per-channel mean/std of the training split, in [0, 1] pixel units (what models normalize with).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    FASHION_MNIST: ((0.2860,), (0.3530,)),
    CIFAR10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    SYNTHETIC: ((0.5,), (0.25,)),
}
SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """uint8 images (N, C, H, W) with int64 labels (N,)."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return DATASET_STATS[self.name]

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images → float32 tensor scaled to [0, 1] and standardized with the dataset's statistics."""
        import torch  # (here, not at the top: loading datasets must not import torch; see models/__init__)

        mean, std = self.mean_std
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return (torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32) / 255.0 - m) / s

    def subset(self, n: int | None) -> ImageDataset:
        """The first ``n`` samples (all of them for ``None``)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DatasetError(f"the sample count must be ≥ 1, got {n}")
        return ImageDataset(self.name, self.split, self.images[:n], self.labels[:n], self.num_classes)


def load_dataset(name: str, split: str = "test", data_dir: str | Path | None = None) -> ImageDataset:
    """Load ``split`` ("train" or "test") of dataset ``name``; raises :class:`DatasetError` with a fix."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: choose train or test")
    loaders: dict[str, Callable[[str, Path | None], ImageDataset]] = {
        FASHION_MNIST: _load_fashion_mnist,
        CIFAR10: _load_cifar10,
        SYNTHETIC: lambda s, _d: synthetic_dataset(
            n=2048 if s == "train" else 512, seed=0 if s == "train" else 1, split=s
        ),
    }
    if name not in loaders:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return loaders[name](split, Path(data_dir) if data_dir is not None else None)


# --- Fashion-MNIST: IDX files -------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes, checking its header against its size."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path} is a damaged gzip file ({exc}); reinstall or re-download it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE:
        raise DatasetError(f"{path}: only unsigned-byte IDX data is supported (type code {raw[2]:#04x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header promises {expected} bytes of data for shape {shape}, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, owned


def _find(directory: Path, stem: str, hint: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{stem}[.gz] not found in {directory}: {hint}")


def _load_fashion_mnist(split: str, data_dir: Path | None) -> ImageDataset:
    directory = data_dir or FASHION_MNIST_DIR
    if not directory.is_dir():
        raise DatasetError(f"Fashion-MNIST not found: {directory} does not exist; {FASHION_MNIST_HINT}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte", FASHION_MNIST_HINT))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte", FASHION_MNIST_HINT))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST files in {directory} disagree: images {images.shape}, labels {labels.shape}"
        )
    if labels.max(initial=0) > 9:
        raise DatasetError(f"Fashion-MNIST labels in {directory} go beyond class 9")
    return ImageDataset(FASHION_MNIST, split, images[:, None, :, :], labels.astype(np.int64), 10)


# --- CIFAR-10: python batches -------------------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10's python batches that can rebuild numpy arrays and nothing else.

    The batches are pickled dicts of bytes, lists and ndarrays; refusing every other global means a
    tampered file cannot run code (the same idea as ``torch.load(weights_only=True)``).
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{path} is not a valid CIFAR-10 python batch: {exc}") from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a valid CIFAR-10 python batch (not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{path} lacks the 'data' or 'labels' entry of a CIFAR-10 batch")
    data = np.asarray(data)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels_arr):
        raise DatasetError(
            f"{path}: expected uint8 data (N, 3072) with N labels, got {data.dtype} {data.shape}"
        )
    if len(labels_arr) and (labels_arr.min() < 0 or labels_arr.max() > 9):
        raise DatasetError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels_arr


def _load_cifar10(split: str, data_dir: Path | None) -> ImageDataset:
    if data_dir is None:
        raise DatasetError(f"CIFAR-10 needs a data directory: {CIFAR10_HINT}")
    directory = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = []
    for name in names:
        path = directory / name
        if not path.is_file():
            raise DatasetError(f"CIFAR-10 file {path} not found: {CIFAR10_HINT}")
        parts.append(_read_cifar_batch(path))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(CIFAR10, split, np.ascontiguousarray(images), labels, 10)


def download_cifar10(dest: Path, url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5) -> Path:
    """Download and extract CIFAR-10's python batches into ``dest``; returns the batches folder.

    Only the batch files are extracted (no path from the archive is trusted).
    """
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            blob = resp.read()
    except OSError as exc:
        raise DatasetError(f"cannot download CIFAR-10 from {url}: {exc}; {CIFAR10_HINT}") from exc
    if md5 is not None and hashlib.md5(blob).hexdigest() != md5:
        raise DatasetError(f"the CIFAR-10 archive from {url} has the wrong checksum; try again")
    out = dest / "cifar-10-batches-py"
    out.mkdir(exist_ok=True)
    wanted = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                base = Path(member.name).name
                if member.isfile() and base in wanted:
                    src = tar.extractfile(member)
                    if src is not None:
                        (out / base).write_bytes(src.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"the CIFAR-10 archive from {url} is damaged: {exc}") from exc
    return out


# --- synthetic -----------------------------------------------------------------------------------------


def synthetic_dataset(
    n: int = 256,
    seed: int = 0,
    image_size: int = 28,
    channels: int = 1,
    num_classes: int = 10,
    split: str = "test",
) -> ImageDataset:
    """A small learnable set for tests: each class is a fixed smooth random template plus pixel noise.

    Templates come from a fixed generator (the same for every split), samples from ``seed``.
    """
    if n < 1:
        raise DatasetError(f"the synthetic set needs n ≥ 1, got {n}")
    # Class c is a smooth random pattern (a 4×4 grid blown up to the image size) whose brightness grows
    # with c: both survive the network's pooling, so even a tiny model learns them in a few steps.
    coarse = np.random.default_rng(12345).integers(0, 96, size=(num_classes, channels, 4, 4))
    coarse = coarse + (np.arange(num_classes) * 160 // max(num_classes - 1, 1)).reshape(-1, 1, 1, 1)
    reps = -(-image_size // 4)
    templates = coarse.repeat(reps, axis=2).repeat(reps, axis=3)[:, :, :image_size, :image_size]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    noise = rng.normal(0.0, 24.0, size=(n, channels, image_size, image_size))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return ImageDataset(SYNTHETIC, split, images, labels.astype(np.int64), num_classes)


# --- validation split ----------------------------------------------------------------------------------

VALIDATION_SPLIT = "validation"


@dataclass(frozen=True)
class ValidationSplit:
    """A deterministic hold-out of the training split: ``fraction`` of it, picked by a seeded permutation.

    Exit thresholds and temperatures are fitted on it, never on the test split: tuning on the samples
    the results are measured on would flatter them. For an honest fit the model must not have trained
    on these samples either (train on the first part of :meth:`split`).
    """

    fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"the validation fraction must be in (0, 1), got {self.fraction!r}")

    def indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (train, validation) indices into a training split of ``n`` samples; both non-empty."""
        if n < 2:
            raise DatasetError(f"a training split of {n} sample(s) cannot give up a validation split")
        k = min(n - 1, max(1, round(n * self.fraction)))
        perm = np.random.default_rng(self.seed).permutation(n)
        return np.sort(perm[k:]), np.sort(perm[:k])

    def split(self, data: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
        """``data`` (the training split) as (what is left to train on, the validation split)."""
        if data.split != "train":
            raise DatasetError(
                f"a validation split is held out of the training split, never the {data.split} split"
            )
        train_idx, val_idx = self.indices(len(data))
        return (
            ImageDataset(
                data.name, "train", data.images[train_idx], data.labels[train_idx], data.num_classes
            ),
            ImageDataset(
                data.name, VALIDATION_SPLIT, data.images[val_idx], data.labels[val_idx], data.num_classes
            ),
        )

    def describe(self, data: ImageDataset) -> dict[str, Any]:
        """The split's definition for a results or calibration file; the indices' hash shows that a
        later numpy still draws the same permutation from the seed."""
        _, val_idx = self.indices(len(data))
        return {
            "dataset": data.name,
            "from_split": data.split,
            "fraction": self.fraction,
            "seed": self.seed,
            "of_samples": len(data),
            "samples": len(val_idx),
            "indices_sha256": hashlib.sha256(val_idx.astype("<i8").tobytes()).hexdigest(),
        }
