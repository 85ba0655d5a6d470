"""A tiny, quickly learnable dataset for smoke tests and the test suite."""

from __future__ import annotations

import torch

from .cluttered import TensorImageDataset

__all__ = ["synthetic_dataset"]


def synthetic_dataset(length: int, img_size: int, seed: int = 0, num_classes: int = 4) -> TensorImageDataset:
    """A square whose brightness is its class, at a random place on dark noise.

    Class ``c`` of ``C`` has brightness ``80 + 160·c/(C−1)``; the square's side is a quarter of
    the image side.

    Args:
        length: number of images.
        img_size: image side in pixels (≥ 8).
        seed: generator seed; images are a pure function of ``(length, img_size, seed)``.
        num_classes: 2 to 8.
    """
    if not 2 <= num_classes <= 8 or img_size < 8:
        raise ValueError(f"synthetic data needs 2–8 classes and ≥ 8 px, got {num_classes}, {img_size}")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (length, img_size, img_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (length,), generator=g)
    side = max(2, img_size // 4)
    corners = torch.randint(0, img_size - side + 1, (length, 2), generator=g)
    for i in range(length):
        (y0, x0), c = corners[i].tolist(), int(labels[i])
        images[i, y0:y0 + side, x0:x0 + side] = 80 + 160 * c // (num_classes - 1)
    return TensorImageDataset(images, labels, classes=[f"level-{c}" for c in range(num_classes)])
