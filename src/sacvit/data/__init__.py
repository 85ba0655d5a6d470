"""Datasets for sacvit: Cluttered Fashion-MNIST (the default demo data),
plain Fashion-MNIST and ImageNet-style image folders.

Every dataset built here has a ``classes`` list; ``num_classes = len(ds.classes)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .cluttered import ClutteredFashionMNIST, TensorImageDataset, content_boxes, materialize
from .errors import DatasetNotFoundError
from .fashion_mnist import (
    DEFAULT_FMNIST_DIR,
    FASHION_MNIST_CLASSES,
    FMNIST_MEAN,
    FMNIST_STD,
    FashionMNIST,
    gray_to_tensor,
    load_fashion_mnist,
    read_idx,
)
from .imagefolder import build_imagefolder

DATASET_NAMES = ("cluttered-fmnist", "fmnist", "imagefolder")
_DEFAULT_SIZE = {"cluttered-fmnist": 112, "fmnist": 28, "imagefolder": 224}

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_FMNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "ClutteredFashionMNIST",
    "DatasetNotFoundError",
    "FashionMNIST",
    "TensorImageDataset",
    "build_dataset",
    "build_imagefolder",
    "content_boxes",
    "gray_to_tensor",
    "load_fashion_mnist",
    "materialize",
    "read_idx",
]


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    img_size: int | None = None,
    is_training: bool = False,
    length: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Build a dataset by name.

    Args:
        name: ``"cluttered-fmnist"``, ``"fmnist"`` or ``"imagefolder"``.
        root: Data folder; defaults to :data:`DEFAULT_FMNIST_DIR` for the
            Fashion-MNIST datasets and is required for ``"imagefolder"``.
        split: ``"train"`` or ``"val"``.
        img_size: Output side in pixels (default 112 / 28 / 224 respectively).
        is_training: Training augmentation; only ``"imagefolder"`` augments
            (the Fashion-MNIST datasets are deterministic).
        length: Keep only ``length`` samples: the first ones for Fashion-MNIST,
            a ``seed``-determined random subset for ``"imagefolder"``.
        seed: Layout seed of ``"cluttered-fmnist"``; subset seed of ``"imagefolder"``.

    Returns:
        The dataset, with a ``classes`` attribute.

    Raises:
        ValueError: Unknown name, or ``"imagefolder"`` without ``root``.
        DatasetNotFoundError: The data is missing.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    size = img_size if img_size is not None else _DEFAULT_SIZE[name]
    if name == "cluttered-fmnist":
        # the dataset is drawn at 112 px; a smaller size is that image downsampled (the EE view)
        return ClutteredFashionMNIST(
            root if root is not None else DEFAULT_FMNIST_DIR, split, img_size=size, canvas=max(size, 112),
            seed=seed, length=length,
        )
    if name == "fmnist":
        return FashionMNIST(root if root is not None else DEFAULT_FMNIST_DIR, split, img_size=size, length=length)
    if root is None:
        raise ValueError("dataset 'imagefolder' needs root (a folder with train/ and val/)")
    ds = build_imagefolder(root, split, size, is_training=is_training)
    if length is not None and length < len(ds.samples):
        keep = torch.randperm(len(ds.samples), generator=torch.Generator().manual_seed(seed))[:length]
        ds.samples = [ds.samples[i] for i in sorted(keep.tolist())]
        ds.imgs, ds.targets = ds.samples, [t for _, t in ds.samples]
    return ds
