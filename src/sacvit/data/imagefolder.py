"""ImageNet-style image folders (``ROOT/<split>/<class>/*.jpg``) with timm transforms.

Files are decoded by :func:`~.preprocess.load_rgb` (EXIF orientation applied, 16-bit scaled, any PIL
mode converted to RGB) — the decoding ``predict`` and ``from_pretrained(...).preprocess`` use — and
evaluation splits are transformed by the same :class:`~.preprocess.Preprocess` the checkpoint
records, so an evaluation tensor equals ``predict``'s for the same file. Training augmentation
(timm's) differs from evaluation, the decoding does not.

Bad files are found before any training starts, by a verification pass (:func:`unreadable`):
every file is opened and decoded (JPEGs at 1/8 scale, which still reads all their data) and
converted to RGB as the loader does. Zero-byte files, truncated or corrupt images and non-images
with image extensions are reported with their path and reason; :mod:`.build` drops them (or
fails on the first with ``strict``). The decision depends on the files alone, so every DDP rank
drops the same samples and the ranks keep equal batch counts.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision.datasets import ImageFolder

from .errors import DatasetNotFoundError
from .preprocess import IMAGE_SUFFIXES, Preprocess, load_rgb, to_rgb


def safe_loader(path: str):
    """Open an image as RGB (:func:`~.preprocess.load_rgb`); an unreadable or corrupt file raises
    ``ValueError``.

    Args:
        path: Image file.

    Returns:
        The decoded RGB image (a ``PIL.Image.Image``).

    Raises:
        ValueError: ``cannot read image PATH: REASON``.
    """
    try:
        return load_rgb(path)
    except ValueError:
        raise
    except Exception as err:  # MemoryError, …: the file's fault
        raise ValueError(f"cannot read image {path}: {err}") from err


def is_image_file(path: str) -> bool:
    """Whether a folder's file is taken as an image: the suffixes ``predict`` searches for."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _has_class_folders(folder: Path) -> bool:
    """Whether ``folder`` has a sub-folder holding an image file (an image folder's split)."""
    try:
        return any(sub.is_dir() and any(is_image_file(f.name) for f in sub.iterdir()) for sub in folder.iterdir())
    except OSError:
        return False


def imagefolder_hint(root: str | Path) -> str | None:
    """How to read ``root`` with ``--data imagefolder`` when it looks like an image folder (its
    ``train/<class>/`` …, or one split's class folders); ``None`` otherwise."""
    root = Path(root)
    if not root.is_dir():
        return None
    splits = [s for s in ("train", "val", "test") if _has_class_folders(root / s)]
    if splits:
        return (f"{root} looks like an image folder ({', '.join(s + '/<class>/' for s in splits)}): "
                f"pass --data imagefolder --data-dir {root}")
    if _has_class_folders(root):
        parent = root.parent if root.name in ("train", "val", "test") else Path("DIR")
        return (f"{root} holds class folders of images: pass --data imagefolder --data-dir {parent} "
                f"(which holds train/<class>/ and val/<class>/)")
    return None


def check_image(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` when it decodes to RGB.

    Args:
        path: Image file.

    Returns:
        ``None``, or the reason in a few words (``empty file``, ``cannot identify image file …``,
        ``image file is truncated …``).
    """
    from PIL import Image, ImageOps

    try:
        if os.path.islink(path) and not os.path.exists(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale; the whole stream is still read
            image.load()
            to_rgb(ImageOps.exif_transpose(image))  # what the loader does, at the draft size
    except Exception as err:  # OSError, SyntaxError, DecompressionBombError, MemoryError, …
        return " ".join(str(err).split()) or type(err).__name__
    return None


def unreadable(paths: list[str], strict: bool = False) -> list[tuple[str, str]]:
    """The ``(path, reason)`` of every file of ``paths`` that :func:`check_image` rejects, in order.

    Args:
        paths: Image files.
        strict: Raise on the first bad file (in the order of ``paths``) instead.

    Raises:
        ValueError: With ``strict``, ``PATH: REASON``.
    """
    bad = []
    with ThreadPoolExecutor(max_workers=min(32, len(os.sched_getaffinity(0)) + 4)) as pool:  # PIL decodes without the GIL
        for start in range(0, len(paths), 4096):  # bounded number of pending tasks
            chunk = paths[start:start + 4096]
            for path, reason in zip(chunk, pool.map(check_image, chunk)):
                if reason is not None:
                    if strict:
                        raise ValueError(f"unreadable image {path}: {reason} (--strict stops at the first)")
                    bad.append((path, reason))
    return bad


def build_imagefolder(
    root: str | Path,
    split: str,
    img_size: int = 224,
    is_training: bool = False,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
) -> ImageFolder:
    """Build a torchvision ``ImageFolder`` over ``root/split`` with timm transforms.

    Training uses timm's default light augmentation (random-resized crop,
    horizontal flip, colour jitter, no RandAugment); evaluation resizes to
    ``img_size / crop_pct`` and centre-crops. Both normalise with the ImageNet
    mean/std.

    Args:
        root: Dataset root holding ``train/`` and ``val/``.
        split: Sub-folder to read, e.g. ``"train"`` or ``"val"``.
        img_size: Output side in pixels.
        is_training: Use training augmentation.
        crop_pct: Centre-crop fraction for evaluation (0.875 DeiT, 0.9 ViT).
        interpolation: Resize interpolation name understood by timm.

    Returns:
        The dataset; ``classes`` lists the class folder names.

    Raises:
        DatasetNotFoundError: ``root`` or ``root/split`` does not exist.
        ValueError: The split folder has no class sub-folders or no images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder dataset root not found: {root}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"split folder not found: {split_dir} (expected {root}/{split}/<class>/<images>)"
        )
    if not any(p.is_dir() for p in split_dir.iterdir()):
        raise ValueError(f"no class sub-folders in {split_dir} (expected {split_dir}/<class>/<images>)")
    if is_training:
        transform = create_transform(img_size, is_training=True, interpolation=interpolation,
                                     mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=crop_pct)
    else:  # exactly what predict applies to a file (the checkpoint records this Preprocess)
        transform = Preprocess(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation,
                               mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    try:
        return ImageFolder(str(split_dir), transform=transform, loader=safe_loader, is_valid_file=is_image_file)
    except FileNotFoundError as err:  # torchvision: no valid image in any class folder
        raise ValueError(
            f"no images in {split_dir} (extensions: {', '.join(IMAGE_SUFFIXES)}): {err}"
        ) from err
