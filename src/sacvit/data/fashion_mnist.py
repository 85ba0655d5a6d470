"""Fashion-MNIST: idx-file reader, cached loader and a plain resized dataset.

The arrays come from local idx files only (nothing is downloaded). On Debian the
package ``dataset-fashion-mnist`` installs them into :data:`DEFAULT_FMNIST_DIR`.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetNotFoundError
from .splits import POOL_SPLITS, pool_positions, pool_sources

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Grayscale images are scaled to [0, 1] then normalised with these per channel.
FMNIST_MEAN = (0.5, 0.5, 0.5)
FMNIST_STD = (0.5, 0.5, 0.5)

# idx type code -> numpy dtype (multi-byte types are big-endian on disk).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FILE_PREFIX = {"train": "train", "test": "t10k"}
_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST container format), gzipped or plain.

    Args:
        path: File to read. Gzip is detected from the content, not the suffix.

    Returns:
        The array in native byte order, with the shape stored in the header.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is corrupt or truncated (bad gzip stream, bad magic
            number, unknown type code, or a size that does not match the header).
            The message names ``path``.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes)")
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: bad idx magic number 0x{raw[:4].hex()}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: expected {expected} data bytes for shape {shape}, "
            f"found {len(raw) - header} (corrupt or truncated file)"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _not_found(what: str, path: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Fashion-MNIST {what} not found: {path}. Install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian; installs into "
        f"{DEFAULT_FMNIST_DIR}), or pass --data-dir DIR pointing at a folder that "
        "holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
    )


def _normalize_split(split: str) -> str:
    key = {"train": "train", "test": "test", "val": "test"}.get(split)
    if key is None:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected 'train', 'test' or 'val'")
    return key


def _find_file(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise _not_found("file", root / f"{name}.gz")


def load_fashion_mnist(
    root: str | Path = DEFAULT_FMNIST_DIR, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split from idx files, cached per (root, split).

    Args:
        root: Folder holding the four idx files (``.gz`` or uncompressed).
        split: ``"train"`` (60k) or ``"test"``; ``"val"`` is an alias of ``"test"``.

    Returns:
        ``(images, labels)``: read-only uint8 ``(N, 28, 28)`` and int64 ``(N,)``
        arrays. Repeated calls return the same cached arrays.

    Raises:
        DatasetNotFoundError: ``root`` or one of its files is missing.
        ValueError: Unknown split, corrupt file, or inconsistent images/labels.
    """
    split = _normalize_split(split)
    root = Path(root).expanduser()
    key = (str(root.resolve()), split)
    if key in _CACHE:
        return _CACHE[key]
    if not root.is_dir():
        raise _not_found("directory", root)
    prefix = _FILE_PREFIX[split]
    img_path = _find_file(root, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lbl_path}: expected 1-D labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{lbl_path}: labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    images.setflags(write=False)
    labels.setflags(write=False)
    _CACHE[key] = (images, labels)
    return images, labels


@dataclass(frozen=True)
class SplitSource:
    """Where one split's images come from (:mod:`sacvit.data.splits`).

    Attributes:
        images: uint8 ``(N, 28, 28)``, read-only: the training images (``train``), or the training
            images then the test images (the pool's splits).
        labels: int64 labels of ``images``.
        index: the split's images, as indices into ``images``, in the split's order.
        position: per split image, its place in the population it is drawn from (its training-set
            index for ``train``, its pool position otherwise): what generated data is keyed by.
        siblings: indices into ``images`` of that population (``siblings[position[i]] == index[i]``).
        stream: ``0`` for the training population, ``3`` for the evaluation pool (a layout stream id).
    """

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    position: np.ndarray
    siblings: np.ndarray
    stream: int


def split_source(root: str | Path, split: str, holdout: int) -> SplitSource:
    """The images of ``split`` (``"train"``, ``"holdout"``, ``"calibration"`` or ``"test"``).

    Raises:
        ValueError: unknown split, or ``holdout`` outside ``[0, 60k)``; DatasetNotFoundError: no data.
    """
    if split not in ("train", *POOL_SPLITS):
        raise ValueError(f"unknown split {split!r}; expected 'train', {', '.join(map(repr, POOL_SPLITS))}")
    train_x, train_y = load_fashion_mnist(root, "train")
    n = len(train_x)
    if not 0 <= holdout < n:
        raise ValueError(f"holdout={holdout} must be in [0, {n}) training images")
    if split == "train":
        siblings = np.arange(n - holdout, dtype=np.int64)
        return SplitSource(train_x, train_y, siblings, siblings, siblings, 0)
    test_x, test_y = load_fashion_mnist(root, "test")
    key = (str(Path(root).expanduser().resolve()), "train+test")
    if key not in _CACHE:
        both = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
        for a in both:
            a.setflags(write=False)
        _CACHE[key] = both
    images, labels = _CACHE[key]
    siblings = pool_sources(n, holdout, len(test_x))
    position = pool_positions(len(siblings), split)
    return SplitSource(images, labels, siblings[position], position, siblings, 3)


@lru_cache(maxsize=256)
def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of PIL's bilinear (triangle) filter, antialiased when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    w = np.clip(1.0 - np.abs((np.arange(n_in) + 0.5 - centers[:, None]) / support), 0.0, None)
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    w.setflags(write=False)  # shared by the cache
    return w


def resize_gray(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 grayscale image to ``size x size`` with a bilinear filter.

    Uses the same triangle filter as ``PIL.Image.resize(..., BILINEAR)`` (within
    one gray level), written as two small matrix products, which is several
    times faster than PIL for 28-pixel inputs.

    Args:
        img: uint8 ``(H, W)`` array.
        size: Output side in pixels.

    Returns:
        A new writable uint8 ``(size, size)`` array.
    """
    h, w = img.shape
    if (h, w) == (size, size):
        return np.array(img, copy=True)
    out = _bilinear_weights(h, size) @ img.astype(np.float32) @ _bilinear_weights(w, size).T
    return (out + 0.5).astype(np.uint8)  # convex weights: values stay within [0, 255]


def gray_to_tensor(img: np.ndarray | torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Turn a uint8 ``(H, W)`` or ``(C, H, W)`` image into a float32 ``(3, H, W)`` tensor.

    A single grayscale channel is replicated three times; values are scaled to
    ``[0, 1]`` and, when ``normalize`` is set, mapped with mean/std 0.5 to ``[-1, 1]``.
    """
    x = np.asarray(img, dtype=np.float32)
    x = x * np.float32(1 / 127.5) - np.float32(1.0) if normalize else x * np.float32(1 / 255)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    return torch.from_numpy(x)


class FashionMNIST(Dataset):
    """Plain Fashion-MNIST, resized to ``img_size`` and replicated to 3 channels.

    Args:
        root: Folder holding the idx files.
        split: ``"train"`` (the first ``60k − holdout`` training images), or ``"holdout"``,
            ``"calibration"`` or ``"test"``: the evaluation pool's splits (:mod:`sacvit.data.splits`).
        img_size: Output side in pixels (28 keeps the native resolution).
        holdout: training images kept out of ``"train"`` (they join the test images in the pool).
        length: Use only the first ``length`` samples (``None``: all).
        normalize: Normalise with mean/std 0.5; otherwise values are in ``[0, 1]``.

    Attributes:
        classes: The ten class names.
        targets: int64 labels of the used samples.
    """

    def __init__(
        self,
        root: str | Path = DEFAULT_FMNIST_DIR,
        split: str = "train",
        img_size: int = 28,
        holdout: int = 0,
        length: int | None = None,
        normalize: bool = True,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        src = split_source(root, split, holdout)
        index = src.index if length is None else src.index[:length]
        self.images, self.targets = src.images[index], src.labels[index]
        self.split, self.holdout, self.img_size = split, holdout, img_size
        self.normalize = normalize
        self.classes = list(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return len(self.targets)

    def cache_key(self) -> str:
        """What the pre-rendered images depend on, as a short stable string."""
        return f"pool1_{self.split}_h{self.holdout}_{self.img_size}px_n{len(self)}"

    def raw(self, i: int) -> np.ndarray:
        """Return sample ``i`` as a uint8 ``(img_size, img_size)`` array."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return resize_gray(self.images[i % len(self)], self.img_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return gray_to_tensor(self.raw(i), self.normalize), int(self.targets[i])
