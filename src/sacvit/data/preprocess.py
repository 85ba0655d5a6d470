"""From an image file to exactly the tensor evaluation feeds the model.

A :class:`Preprocess` describes how a dataset's evaluation images are made (it is stored in every
checkpoint's metadata, so a trained model carries its own preprocessing):

* ``grayscale`` datasets (Fashion-MNIST, Cluttered Fashion-MNIST, the synthetic set): the image
  as 8-bit gray, the central square, resized with :func:`~.fashion_mnist.resize_gray` (PIL's
  bilinear filter), scaled and normalised with mean/std 0.5 and replicated to 3 channels by
  :func:`~.fashion_mnist.gray_to_tensor` — what those datasets' ``__getitem__`` returns;
* RGB datasets (image folders): timm's evaluation transform with the same ``crop_pct``,
  interpolation, mean and std as :func:`~.imagefolder.build_imagefolder` (resize the short side
  to ``size / crop_pct``, centre crop, normalise).

:func:`open_image` reads any image PIL decodes — palette, RGBA, CMYK, 16-bit, EXIF-rotated — or
raises ``ValueError`` naming the file and the reason; :func:`to_rgb` is the one conversion of such
an image to RGB (16-bit and float gray scaled, not clipped) and :func:`load_rgb` is both, from a
file: the loader of the image-folder datasets (training, holdout and test splits alike), so that
training, evaluation, calibration, ``predict``, ``visualize``, the export check and
``from_pretrained(...).preprocess`` decode every file identically. :meth:`Preprocess.load` goes
from a file to the evaluation tensor in one call.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .fashion_mnist import FMNIST_MEAN, FMNIST_STD, gray_to_tensor, resize_gray

__all__ = ["Preprocess", "open_image", "to_rgb", "load_rgb", "preprocess_for", "IMAGE_SUFFIXES"]

#: Suffixes of the files a folder is searched for (a file named explicitly is always tried).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_GRAY_DATASETS = ("cluttered-fmnist", "cluttered-fmnist-v1", "fmnist", "synthetic")


@dataclass(frozen=True)
class Preprocess:
    """How evaluation images are made from a picture.

    Attributes:
        img_size: output side in pixels (square).
        grayscale: read as 8-bit gray and replicate to ``channels`` (the Fashion-MNIST family).
        channels: channels of the model input.
        crop_pct: fraction of the resized short side kept by the centre crop (1.0: the central square).
        interpolation: resize filter (``bilinear`` for gray data, timm's name for RGB).
        mean, std: per-channel normalisation.
    """

    img_size: int
    grayscale: bool = False
    channels: int = 3
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.img_size < 1 or not 0 < self.crop_pct <= 1 or self.channels < 1:
            raise ValueError(f"bad preprocessing: img_size={self.img_size}, crop_pct={self.crop_pct}, "
                             f"channels={self.channels}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __call__(self, image) -> Tensor:
        """``(channels, img_size, img_size)`` float tensor of a ``PIL.Image`` (see :func:`open_image`)."""
        if self.grayscale:
            gray = _center_square(_gray_array(image))
            x = resize_gray(gray, self.img_size)
            if set(self.mean) == {0.5} and set(self.std) == {0.5}:  # evaluation's own arithmetic
                t = gray_to_tensor(x, normalize=True)
            else:
                t = gray_to_tensor(x, normalize=False)
                t = (t - torch.tensor(self.mean[:1]).view(-1, 1, 1)) / torch.tensor(self.std[:1]).view(-1, 1, 1)
            return t[:1].expand(self.channels, -1, -1).contiguous()
        transform = _rgb_transform(self.img_size, self.interpolation, self.mean, self.std, self.crop_pct)
        return transform(to_rgb(image))

    def load(self, path: str | Path) -> Tensor:
        """The evaluation tensor of an image file: :func:`open_image`, then this preprocessing.

        Raises:
            ValueError: ``cannot read image PATH: REASON``.
        """
        image = open_image(path)
        try:
            return self(image)
        except Exception as err:  # a decodable image in a mode PIL cannot convert (LAB, HSV, …)
            raise ValueError(f"cannot read image {path}: cannot convert a {image.mode} image: {err}") from None

    def box_to_original(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
        """A box ``(x0, y0, x1, y1)`` in model-input pixels mapped back onto the original ``size = (W, H)``
        image, undoing the resize and the centre crop of :meth:`__call__` (rounded outwards, clipped)."""
        w, h = size
        if self.grayscale:  # the central square, resized to img_size
            side = min(w, h)
            scale_x = scale_y = side / self.img_size
            left, top = (w - side) // 2, (h - side) // 2
        else:  # timm's eval transform: short side to floor(img_size / crop_pct), centre crop img_size
            short = math.floor(self.img_size / self.crop_pct)
            rw, rh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            cx, cy = int(round((rw - self.img_size) / 2.0)), int(round((rh - self.img_size) / 2.0))
            scale_x, scale_y = w / rw, h / rh
            left, top = cx * scale_x, cy * scale_y
        x0, y0, x1, y1 = box
        out = (math.floor(left + x0 * scale_x), math.floor(top + y0 * scale_y),
               math.ceil(left + x1 * scale_x), math.ceil(top + y1 * scale_y))
        return (max(0, out[0]), max(0, out[1]), min(w, out[2]), min(h, out[3]))

    def denormalize(self, x: Tensor) -> np.ndarray:
        """An ``(H, W, 3)`` (or ``(H, W)`` gray) array in [0, 1] of a preprocessed tensor, for display."""
        c = x.shape[0]
        mean = torch.tensor(self.mean[:c] if len(self.mean) >= c else self.mean[:1] * c).view(-1, 1, 1)
        std = torch.tensor(self.std[:c] if len(self.std) >= c else self.std[:1] * c).view(-1, 1, 1)
        img = (x.detach().cpu().float() * std + mean).clamp(0, 1)
        return img[0].numpy() if self.grayscale else img.permute(1, 2, 0).numpy()


def preprocess_for(dataset: str, img_size: int) -> Preprocess:
    """The evaluation preprocessing of a dataset of :data:`~.build.DATASET_NAMES` at ``img_size``."""
    if dataset in _GRAY_DATASETS:
        return Preprocess(img_size=img_size, grayscale=True, crop_pct=1.0, interpolation="bilinear",
                          mean=FMNIST_MEAN, std=FMNIST_STD)
    if dataset == "imagefolder":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return Preprocess(img_size=img_size, crop_pct=0.875, interpolation="bicubic",
                          mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    raise ValueError(f"no preprocessing known for dataset {dataset!r}")


def open_image(path: str | Path):
    """Decode an image file fully, upright (EXIF orientation applied).

    Returns:
        A loaded ``PIL.Image.Image`` in its own mode (``L``, ``RGB``, ``I;16``, …).

    Raises:
        ValueError: ``cannot read image PATH: REASON`` (missing, not an image, truncated, too large).
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"cannot read image {path}: broken symbolic link (to {os.readlink(path)})")
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            if upright is img:
                upright = img.copy()
        return upright
    except FileNotFoundError:
        raise ValueError(f"cannot read image {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"cannot read image {path}: is a directory") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # not an image, truncated, corrupt
        reason = "not an image file PIL can decode" if "cannot identify" in str(err) else str(err)
        raise ValueError(f"cannot read image {path}: {reason}") from None


def _gray_array(image) -> np.ndarray:
    """8-bit gray ``(H, W)`` array of a PIL image of any mode (16-bit and float scaled, not clipped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    if image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        a = a * 255.0 if a.max() <= 1.0 else a
        return np.clip(a + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_rgb(image):
    """The image in PIL's ``RGB`` mode (itself when it already is); 16-bit and float gray are scaled
    first (PIL's own conversion would clip them to white), palette/LA/RGBA/CMYK as PIL converts them."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_gray_array(image)).convert("RGB")
    return image.convert("RGB")


_rgb_image = to_rgb  # the earlier private name


def load_rgb(path: str | Path):
    """An image file as an upright RGB ``PIL.Image``: :func:`open_image`, then :func:`to_rgb`.

    The loader of the image-folder datasets; :class:`Preprocess` applies the same :func:`to_rgb`
    to what ``predict`` opens, so both see the same pixels.

    Raises:
        ValueError: ``cannot read image PATH: REASON``.
    """
    image = open_image(path)
    try:
        return to_rgb(image)
    except Exception as err:  # LAB, HSV, …: decodable, not convertible
        raise ValueError(f"cannot read image {path}: cannot convert a {image.mode} image: {err}") from None


@lru_cache(maxsize=8)
def _rgb_transform(img_size: int, interpolation: str, mean: tuple[float, ...], std: tuple[float, ...],
                   crop_pct: float):
    """timm's evaluation transform, as :func:`~.imagefolder.build_imagefolder` builds it."""
    from timm.data import create_transform

    return create_transform(img_size, is_training=False, interpolation=interpolation, mean=mean, std=std,
                            crop_pct=crop_pct)


def _center_square(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return a[top:top + s, left:left + s]
