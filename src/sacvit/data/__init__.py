"""Datasets for sacvit: Cluttered Fashion-MNIST (the embedded default data), plain Fashion-MNIST,
ImageNet-style image folders and a tiny synthetic set, each in ``train`` / ``holdout`` / ``test``
splits (:func:`build_dataset`).

Every dataset built here has a ``classes`` list; ``num_classes = len(ds.classes)``.
"""

from __future__ import annotations

from .build import DATASET_NAMES, SPLITS, build_dataset, default_holdout, default_img_size, recorded_source
from .classes import check_class_names
from .cluttered import STYLES, ClutteredFashionMNIST, ClutterStyle, TensorImageDataset, content_boxes, materialize
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
from .synthetic import synthetic_dataset

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_FMNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "SPLITS",
    "STYLES",
    "ClutterStyle",
    "ClutteredFashionMNIST",
    "DatasetNotFoundError",
    "FashionMNIST",
    "TensorImageDataset",
    "build_dataset",
    "build_imagefolder",
    "check_class_names",
    "content_boxes",
    "default_holdout",
    "default_img_size",
    "gray_to_tensor",
    "load_fashion_mnist",
    "materialize",
    "read_idx",
    "recorded_source",
    "synthetic_dataset",
]
