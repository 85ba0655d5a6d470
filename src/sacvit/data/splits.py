"""Which source images each split of the Fashion-MNIST based data holds: one fixed partition.

``train`` is the first ``60k − holdout`` Fashion-MNIST training images (the stand-in's and every
fine-tune's training set). The other ``holdout`` training images and the 10k test images form
the **evaluation pool**: images that no compared model, nor the stand-in, trains on. One fixed
random permutation of the pool splits it into

* ``holdout`` (20%): validation — model selection, convergence, every choice but η;
* ``calibration`` (40%): η only (``sacvit calibrate``, the demo's certificate);
* ``test`` (40%): what results are reported on.

Calibration and test images are a random partition of one pool, rendered by one generator
(an image's pixels depend on its place in the pool, not on the split it falls in), so they are
exchangeable by construction: the premise of the calibration guarantee. The partition does not
depend on the layout seed. Within a split, images come in the permutation's order, so the first
``length`` of a split are a random subset of it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["POOL_FRACTIONS", "POOL_SPLITS", "pool_positions", "pool_sources", "pool_split_sizes"]

#: The evaluation pool's splits and their shares.
POOL_FRACTIONS: dict[str, float] = {"holdout": 0.2, "calibration": 0.4, "test": 0.4}
POOL_SPLITS = tuple(POOL_FRACTIONS)
_POOL_SEED = 20261203  # fixed: the partition is part of the data's definition


def pool_split_sizes(n_pool: int) -> dict[str, int]:
    """Images per pool split: 20/40/40% of ``n_pool`` (test takes the rounding remainder)."""
    hold = round(POOL_FRACTIONS["holdout"] * n_pool)
    cal = round(POOL_FRACTIONS["calibration"] * n_pool)
    return {"holdout": hold, "calibration": cal, "test": n_pool - hold - cal}


def pool_positions(n_pool: int, split: str) -> np.ndarray:
    """Positions in the pool (``0 … n_pool − 1``) of ``split``'s images, in the split's order.

    Raises:
        ValueError: ``split`` is not a pool split.
    """
    if split not in POOL_FRACTIONS:
        raise ValueError(f"{split!r} is not a split of the evaluation pool ({', '.join(POOL_SPLITS)})")
    order = np.random.default_rng(_POOL_SEED).permutation(n_pool)
    sizes = pool_split_sizes(n_pool)
    start = sum(sizes[s] for s in POOL_SPLITS[:POOL_SPLITS.index(split)])
    return order[start:start + sizes[split]]


def pool_sources(n_train_source: int, holdout: int, n_test_source: int) -> np.ndarray:
    """Each pool position's image as an index into ``concat(train images, test images)``.

    The pool is the last ``holdout`` of the ``n_train_source`` training images, then every test image.
    """
    tail = np.arange(n_train_source - holdout, n_train_source)
    return np.concatenate([tail, n_train_source + np.arange(n_test_source)]).astype(np.int64)
