"""Every dataset by name, in its four splits, optionally pre-rendered into memory and cached.

Splits, the same for every dataset:

* ``"train"`` — what models are trained on;
* ``"holdout"`` — validation, never trained on: the validation curve, checkpoint selection and
  every choice but η;
* ``"calibration"`` — η only (``sacvit calibrate``), never trained on nor used for selection;
* ``"test"`` — the split results are reported on.

Fashion-MNIST based data draw ``holdout``, ``calibration`` and ``test`` as one random partition
of one pool (:mod:`sacvit.data.splits`), so calibration and test images are exchangeable. An image
folder's ``holdout`` and ``calibration`` are the two halves of ``--holdout`` images held out of
``train/``, its ``test`` is ``test/`` (or, as for ImageNet, ``val/``): the calibration guarantee
carries over to that folder only if its images are drawn like the training ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .cluttered import ClutteredFashionMNIST, TensorImageDataset, materialize
from .errors import DatasetNotFoundError
from .fashion_mnist import DEFAULT_FMNIST_DIR, FashionMNIST, load_fashion_mnist
from .imagefolder import build_imagefolder, imagefolder_hint, unreadable
from .synthetic import synthetic_dataset

__all__ = ["DATASET_NAMES", "SPLITS", "build_dataset", "default_holdout", "default_img_size", "recorded_source"]

#: Every dataset name a command accepts.
DATASET_NAMES = ("cluttered-fmnist", "cluttered-fmnist-v1", "fmnist", "imagefolder", "synthetic")
SPLITS = ("train", "holdout", "calibration", "test")
_DEFAULT_SIZE = {"cluttered-fmnist": 112, "cluttered-fmnist-v1": 112, "fmnist": 28, "imagefolder": 224,
                 "synthetic": 32}
_STYLE = {"cluttered-fmnist": "v2", "cluttered-fmnist-v1": "v1"}
_SYNTHETIC_LENGTH = {"train": 256, "holdout": 64, "calibration": 64, "test": 64}
_SYNTHETIC_SEED = {"train": 0, "test": 1, "holdout": 2, "calibration": 3}


def default_img_size(name: str) -> int:
    """The natural image side of dataset ``name``."""
    _check_name(name)
    return _DEFAULT_SIZE[name]


def default_holdout(n_train: int) -> int:
    """Images held out of ``n_train`` training images: 10 000, or a sixth of a smaller set."""
    return min(10_000, n_train // 6)


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def recorded_source(spec: Any, data: str | None = None, data_dir: Any = None,
                    seed: int | None = None) -> tuple[str, Any, int, int | None]:
    """The data to evaluate or calibrate a checkpoint on: what was asked, else what it was trained on.

    Args:
        spec: the checkpoint's :class:`~sacvit.meta.DataSpec` (``CheckpointMeta.data``), or ``None``.
        data, data_dir, seed: what the user gave (``None``: not given).

    Returns:
        ``(data, data_dir, seed, holdout)``: ``data`` defaults to the recorded dataset (else
        ``cluttered-fmnist``); the folder, seed and held-out count default to the recorded ones when
        ``data`` is the recorded dataset (else the dataset's defaults: ``None``, 0, ``None``).
    """
    data = data or (spec.name if spec is not None else "cluttered-fmnist")
    same = spec is not None and spec.name == data
    data_dir = data_dir if data_dir is not None else (spec.folder if same else None)
    seed = seed if seed is not None else (spec.seed if same else 0)
    return data, data_dir, seed, spec.holdout if same else None


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    img_size: int | None = None,
    *,
    length: int | None = None,
    holdout: int | None = None,
    seed: int = 0,
    is_training: bool = False,
    prerender: bool = False,
    cache_dir: str | Path | None = None,
    main: bool = True,
    world: int = 1,
    strict: bool = False,
) -> Dataset:
    """One split of a dataset of :data:`DATASET_NAMES`, with a ``classes`` attribute.

    Args:
        name: dataset name.
        root: data folder (``None``: the system copy for Fashion-MNIST; required for image folders).
        split: one of :data:`SPLITS`.
        img_size: image side in pixels (default: :func:`default_img_size`).
        length: keep only the first ``length`` images (a seeded random subset for image folders).
        holdout: training images held out for ``"holdout"`` (default: :func:`default_holdout`).
        seed: layout seed (cluttered, synthetic) or subset seed (image folders).
        is_training: training augmentation (image folders only; the others are deterministic).
        prerender: render generated data (Fashion-MNIST based) into memory once.
        cache_dir: with ``prerender``, keep the rendered arrays in an ``.npz`` cache here.
        main: this process writes the cache file; with ``world > 1`` the others wait for it.
        world: number of processes (a barrier is used when > 1 and caching).
        strict: image folders: fail on the first unreadable image instead of skipping it. Skipped
            files are printed (path and reason) and listed in the dataset's ``skipped``.

    Raises:
        ValueError: unknown name or split, unusable data, an image folder split or class folder
            without a readable image; DatasetNotFoundError: missing data (for Fashion-MNIST at a folder that
            looks like an image folder, the message says to pass --data imagefolder).
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    size = img_size if img_size is not None else _DEFAULT_SIZE[name]
    if name == "synthetic":
        n = length if length is not None else _SYNTHETIC_LENGTH[split]
        return synthetic_dataset(n, size, seed=seed + _SYNTHETIC_SEED[split])
    if name == "imagefolder":
        if root is None:
            raise ValueError("dataset 'imagefolder' needs a folder (--data-dir) with train/ and test/ or val/")
        verify = dict(strict=strict, cache_dir=cache_dir, main=main, world=world)
        ds = _imagefolder(Path(root), split, size, is_training, holdout, length, seed, verify)
    else:
        root = root if root is not None else DEFAULT_FMNIST_DIR
        try:
            hold = holdout
            if hold is None:
                hold = default_holdout(len(load_fashion_mnist(root, "train")[1]))
            if name == "fmnist":
                ds = FashionMNIST(root, split, img_size=size, holdout=hold, length=length)
            else:
                ds = ClutteredFashionMNIST(root, split, img_size=size, style=_STYLE[name], holdout=hold,
                                           seed=seed, length=length)
        except DatasetNotFoundError as err:
            hint = imagefolder_hint(root)
            if hint is None:
                raise
            default = ", the default," if name == "cluttered-fmnist" else ""
            raise DatasetNotFoundError(f"no Fashion-MNIST idx files in {root} (--data {name}{default} reads "
                                       f"train-images-idx3-ubyte.gz and the other Fashion-MNIST files). {hint}") from err
    if len(ds) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} at {root} has no images")
    if prerender and hasattr(ds, "raw"):
        return _prerendered(ds, name, root, cache_dir, main, world)
    return ds


def _imagefolder(root: Path, split: str, size: int, is_training: bool, holdout: int | None,
                 length: int | None, seed: int, verify: dict) -> Dataset:
    if split == "test":
        folder = "test" if (root / "test").is_dir() else "val"
        ds = _drop_unreadable(build_imagefolder(root, folder, size), root / folder, **verify)
    else:
        ds = build_imagefolder(root, "train", size, is_training=is_training and split == "train")
        ds = _drop_unreadable(ds, root / "train", **verify)
        n = len(ds.samples)
        hold = default_holdout(n) if holdout is None else holdout
        if not 0 <= hold < n:
            raise ValueError(f"holdout={hold} must be in [0, {n}) training images of {root / 'train'}")
        if (split == "holdout" and hold < 2) or (split == "calibration" and hold < 1):
            raise ValueError(f"the {split!r} split is empty: pass --holdout N ≥ 2 (the held-out images are "
                             "split in halves: validation, then calibration)")
        # the same held-out images whatever the training seed: a fixed permutation; its first half
        # is the validation ("holdout") split, the second the calibration split
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:hold].tolist()
        held = {"holdout": set(order[:hold // 2]), "calibration": set(order[hold // 2:])}
        if split == "train":
            _keep(ds, sorted(set(range(n)) - held["holdout"] - held["calibration"]))
        else:
            _keep(ds, sorted(held[split]))
    if length is not None and length < len(ds.samples):
        pick = torch.randperm(len(ds.samples), generator=torch.Generator().manual_seed(seed))[:length]
        _keep(ds, sorted(pick.tolist()))
    return ds


_VERIFIED: dict[str, list[tuple[str, str]]] = {}  # verification results of this process, by file list


def _drop_unreadable(ds, folder: Path, strict: bool, cache_dir: str | Path | None, main: bool, world: int):
    """Drop the samples of ``ds`` whose file does not decode (verified once per file list, cached).

    Raises:
        ValueError: ``strict`` and a bad file; no readable image in ``folder`` or in a class folder.
    """
    import torch.distributed as dist

    paths = [p for p, _ in ds.samples]
    listing = "\n".join(f"{p}\t{_stat(p)}" for p in paths)
    key = hashlib.sha1(listing.encode()).hexdigest()[:16]
    cache = None if cache_dir is None else Path(cache_dir) / f"verified_{key}.json"
    bad = _VERIFIED.get(key)
    first = bad is None  # this process has not seen (nor logged) this file list yet
    if first:
        if cache is not None and main and not cache.is_file():
            bad = unreadable(paths, strict)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(bad))
            os.replace(tmp, cache)
        if cache is not None and world > 1:
            dist.barrier()  # the other ranks read rank 0's result
        if bad is None:
            cached = cache is not None and cache.is_file()
            bad = [tuple(b) for b in json.loads(cache.read_text())] if cached else unreadable(paths, strict)
        _VERIFIED[key] = bad
    if bad and strict:
        raise ValueError(f"unreadable image {bad[0][0]}: {bad[0][1]} (--strict stops at the first)")
    dropped = {p for p, _ in bad}
    if bad:
        _keep(ds, [i for i, p in enumerate(paths) if p not in dropped])
    if not ds.samples:
        raise ValueError(f"no readable image in {folder}{_example(bad)}")
    empty = sorted(set(range(len(ds.classes))) - set(ds.targets))
    if empty:
        where = folder / ds.classes[empty[0]]
        raise ValueError(f"class folder {where} has no readable image"
                         f"{_example([b for b in bad if Path(b[0]).parent == where])}")
    for path, reason in bad if main and first else ():
        print(f"sacvit: skipping unreadable image {path}: {reason}", file=sys.stderr)
    if bad and main and first:
        print(f"sacvit: skipped {len(bad)} unreadable image{'s' if len(bad) > 1 else ''} of {len(paths)} in "
              f"{folder} (first: {bad[0][0]}; --strict stops at the first instead)", file=sys.stderr)
    ds.skipped = list(bad)
    return ds


def _stat(path: str) -> str:
    """Size and mtime of a file for the verification cache key (a broken link: the link's own)."""
    try:
        st = os.stat(path)
    except OSError:
        st = os.lstat(path)
    return f"{st.st_size}\t{st.st_mtime_ns}"


def _example(bad: list[tuple[str, str]]) -> str:
    return f" ({len(bad)} unreadable, e.g. {bad[0][0]}: {bad[0][1]})" if bad else ""


def _keep(ds, indices: list[int]) -> None:
    ds.samples = [ds.samples[i] for i in indices]
    ds.imgs, ds.targets = ds.samples, [t for _, t in ds.samples]


def _prerendered(ds, name: str, root, cache_dir: str | Path | None, main: bool, world: int) -> Dataset:
    """``ds`` rendered into memory once, through an ``.npz`` cache when ``cache_dir`` is given."""
    import torch.distributed as dist

    key = ds.cache_key()
    tag = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
    cache = None if cache_dir is None else Path(cache_dir) / f"{name}_{key}_{tag}.npz"
    loaded = None
    if cache is not None and main and not cache.is_file():
        images, labels = materialize(ds)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images.numpy(), labels=labels.numpy())
        os.replace(tmp, cache)
        loaded = images, labels
    if cache is not None and world > 1:
        dist.barrier()  # the other ranks wait for rank 0's file
    if loaded is None:
        if cache is not None:
            with np.load(cache) as f:
                loaded = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
        else:
            loaded = materialize(ds)
    return TensorImageDataset(*loaded, normalize=ds.normalize, classes=ds.classes)
