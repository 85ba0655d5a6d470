"""Shared tiny configurations: every test runs in seconds on 2 CPU cores."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import sacvit  # noqa: F401  (registers the timm variants)
from sacvit import SACConfig, SACViT

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)


def make_tiny(**sac) -> SACViT:
    """An 8×8-token SAC-ViT (4×4 EE grid) with random weights, incl. a non-zero reuse MLP."""
    torch.manual_seed(0)
    model = SACViT(sac=SACConfig(**{"window": 3, "gca_start": 1, **sac}), **TINY)
    if model.reuse is not None:  # leave the zero init so that the reuse term is exercised
        torch.nn.init.normal_(model.reuse.mlp.fc2.weight, std=0.02)
    return model.eval()


@pytest.fixture
def tiny() -> SACViT:
    return make_tiny()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(6, 3, 32, 32)


_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    """Write ``arr`` (uint8 or int32) as an idx file, gzipped when ``compress``."""
    arr = arr.astype(">i4") if arr.dtype.kind == "i" and arr.itemsize > 1 else arr.astype(np.uint8)
    data = struct.pack(f">BBBB{arr.ndim}I", 0, 0, _CODES[arr.dtype], arr.ndim, *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fake_fmnist(root: Path, n_train: int = 160, n_test: int = 60, seed: int = 0,
                      test_labels: np.ndarray | None = None, train_labels: np.ndarray | None = None) -> Path:
    """Fashion-MNIST-shaped idx files: class ``c`` is a bright bar of width ``2 + 2c``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 4:24, 13 - c:15 + c] = 160 + rng.integers(0, 90)
        if prefix == "t10k" and test_labels is not None:
            labels = test_labels.astype(np.uint8)
        if prefix == "train" and train_labels is not None:
            labels = train_labels.astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root
