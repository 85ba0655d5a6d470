"""Cluttered Fashion-MNIST: one garment at a random scale and place on a dark
canvas, among fragments cut from other garments.

Samples are generated on the fly and are a pure function of
``(style, seed, split, index)``, so they are identical across runs, processes and
DataLoader workers. For training on a CPU, :func:`materialize` pre-renders a
dataset once and :class:`TensorImageDataset` serves the stored images.

Two named styles (:data:`STYLES`): ``"v2"``, the default, where the garment is a small
minority of the image and distractor fragments surround it, so that *where to look*
matters; and ``"v1"``, sacvit 0.1's data (large garments, a few small fragments).

Splits (:mod:`sacvit.data.splits`): ``"train"`` is the first ``60k − holdout`` Fashion-MNIST
training images; ``"holdout"`` (validation), ``"calibration"`` (η) and ``"test"`` are one fixed
random partition of the evaluation pool (the other training images and the 10k test images),
drawn by one generator, so that calibration and test images are exchangeable.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from .fashion_mnist import (
    DEFAULT_FMNIST_DIR,
    FASHION_MNIST_CLASSES,
    gray_to_tensor,
    resize_gray,
    split_source,
)

_PLACEMENT_TRIES = 4  # positions tried per clutter fragment before it is dropped


@dataclass(frozen=True)
class ClutterStyle:
    """How the images are drawn.

    Attributes:
        canvas: side of the canvas in pixels.
        scale: inclusive range of the garment side in pixels (placed uniformly on the canvas).
        num_clutter: distractor fragments per image (a few are dropped when no free spot is found).
        clutter_size: inclusive range of the fragment side in pixels.
    """

    canvas: int = 112
    scale: tuple[int, int] = (32, 64)
    num_clutter: int = 8
    clutter_size: tuple[int, int] = (8, 14)


#: The named styles; ``"v2"`` is the default data of ``sacvit demo``.
STYLES: dict[str, ClutterStyle] = {
    "v1": ClutterStyle(canvas=112, scale=(32, 64), num_clutter=8, clutter_size=(8, 14)),
    "v2": ClutterStyle(canvas=112, scale=(24, 40), num_clutter=12, clutter_size=(8, 12)),
}
_BOX_CACHE: dict[tuple[str, int], list[list[int]]] = {}


def content_boxes(images: np.ndarray, threshold: int = 16) -> np.ndarray:
    """Tight boxes of the pixels brighter than ``threshold``, per image.

    Args:
        images: uint8 ``(N, H, W)`` array.
        threshold: Pixels strictly above this value count as content.

    Returns:
        int64 ``(N, 4)`` array of ``(x0, y0, x1, y1)`` with exclusive ends; an
        image without content gets the full frame.
    """
    n, h, w = images.shape
    mask = images > threshold
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    empty = ~rows.any(axis=1)
    boxes = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            w - cols[:, ::-1].argmax(axis=1),
            h - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.int64)
    boxes[empty] = (0, 0, w, h)
    return boxes


def _first_covered(lo: int, n_in: int, n_out: int) -> int:
    """First output pixel that the bilinear resize fills from input pixels ``>= lo``."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # filter half-width in input pixels
    return max(math.floor((lo + 0.5 - support) / scale - 0.5) + 1, 0)


def _end_covered(hi: int, n_in: int, n_out: int) -> int:
    """End (exclusive) of the output pixels filled from input pixels ``< hi``."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    return min(math.ceil((hi - 0.5 + support) / scale - 0.5), n_out)


class ClutteredFashionMNIST(Dataset):
    """Fashion-MNIST garments placed on a larger canvas with garment clutter.

    Sample ``i`` shows garment ``i`` of the split resized to a random side in ``scale`` at a
    uniformly random position, plus up to ``num_clutter`` square crops (side in ``clutter_size``)
    of other random garments of its population (the training images, or the evaluation pool).
    Crops overlap their garment's silhouette, often across an edge, so they show
    texture and outline bits rather than whole garments. Each fragment is placed
    at a random position outside the garment's square (a few tries, else it is
    dropped), so the garment is never occluded. Layers are combined with a
    pixel-wise maximum, so the background stays black as in MNIST.

    Args:
        root: Folder holding the Fashion-MNIST idx files.
        split: ``"train"`` (the first ``60k − holdout`` training images), or ``"holdout"``,
            ``"calibration"`` or ``"test"``: the evaluation pool's splits (:mod:`sacvit.data.splits`).
        img_size: Output side in pixels. A side smaller than the canvas is the canvas
            resized (bilinear, antialiased, as SAC-ViT's EE stage downsamples), so
            ``img_size=56`` with a 112-px canvas is the EE view of the 112-px data.
        style: a name of :data:`STYLES` or a :class:`ClutterStyle`.
        canvas, scale, num_clutter, clutter_size: override the style's fields.
        holdout: training images kept out of ``"train"`` (they join the test images in the pool).
        seed: Non-negative seed; an image depends only on ``(style, seed, its population, its
            place in it)``, not on the split of the pool it falls in.
        length: Use only the first ``length`` samples (``None``: the whole split).
        normalize: Normalise with mean/std 0.5; otherwise values are in ``[0, 1]``.

    Attributes:
        classes: The ten class names.
        targets: int64 labels of the used samples.
        style: the :class:`ClutterStyle` drawn.
    """

    VERSION = 3  # bump when the layout or rendering changes: it keys the pre-render caches

    def __init__(
        self,
        root: str | Path = DEFAULT_FMNIST_DIR,
        split: str = "train",
        img_size: int = 112,
        style: str | ClutterStyle = "v2",
        *,
        canvas: int | None = None,
        scale: tuple[int, int] | None = None,
        num_clutter: int | None = None,
        clutter_size: tuple[int, int] | None = None,
        holdout: int = 0,
        seed: int = 0,
        length: int | None = None,
        normalize: bool = True,
    ) -> None:
        if isinstance(style, str):
            if style not in STYLES:
                raise ValueError(f"unknown Cluttered Fashion-MNIST style {style!r}; valid: {', '.join(STYLES)}")
            style = STYLES[style]
        overrides = dict(canvas=canvas, scale=scale, num_clutter=num_clutter, clutter_size=clutter_size)
        style = dataclasses.replace(style, **{k: v for k, v in overrides.items() if v is not None})
        source = split_source(root, split, holdout)
        self.images = source.images
        src_h, src_w = self.images.shape[1:]
        size = style.canvas
        lo, hi = style.scale
        if not 1 <= img_size <= size:
            raise ValueError(f"img_size={img_size} must be between 1 and the canvas side {size}")
        if not 1 <= lo <= hi <= size:
            raise ValueError(f"scale {style.scale} must satisfy 1 <= lo <= hi <= canvas={size}")
        if style.num_clutter < 0:
            raise ValueError(f"num_clutter must be >= 0, got {style.num_clutter}")
        if not 1 <= style.clutter_size[0] <= style.clutter_size[1] <= min(src_h, src_w, size):
            raise ValueError(
                f"clutter_size {style.clutter_size} must satisfy 1 <= lo <= hi <= "
                f"{min(src_h, src_w, size)} (source and canvas size)"
            )
        if style.num_clutter and len(source.siblings) < 2:
            raise ValueError("clutter needs at least two source images")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        key = (str(Path(root).expanduser().resolve()), len(self.images))
        if key not in _BOX_CACHE:
            _BOX_CACHE[key] = content_boxes(self.images).tolist()  # lists: fast scalar access
        self._boxes = _BOX_CACHE[key]
        n = len(source.index) if length is None else min(length, len(source.index))
        self._src, self._pos = source.index[:n].tolist(), source.position[:n].tolist()
        self._siblings, self._stream = source.siblings.tolist(), source.stream
        self.targets = source.labels[source.index[:n]]
        self.split, self.img_size, self.style, self.holdout = split, img_size, style, holdout
        self.canvas, self.scale = style.canvas, style.scale
        self.num_clutter, self.clutter_size = style.num_clutter, style.clutter_size
        self.seed, self.normalize = seed, normalize
        self.classes = list(FASHION_MNIST_CLASSES)

    def cache_key(self) -> str:
        """What the pre-rendered images depend on, as a short stable string."""
        st = self.style
        return (f"v{self.VERSION}_c{st.canvas}_s{st.scale[0]}-{st.scale[1]}_n{st.num_clutter}_"
                f"f{st.clutter_size[0]}-{st.clutter_size[1]}_{self.split}_h{self.holdout}_"
                f"{self.img_size}px_seed{self.seed}_n{len(self)}")

    def __len__(self) -> int:
        return len(self.targets)

    def _index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return int(i) % len(self)

    def _layout(self, i: int) -> tuple[tuple[int, int, int], list[tuple[int, ...]]]:
        """Random layout of sample ``i``, a pure function of ``(style, seed, population, place)``.

        Returns:
            ``(side, x0, y0)`` of the garment and, per clutter fragment,
            ``(source index, side, crop x, crop y, canvas x, canvas y)``.
        """
        place = self._pos[i]
        rng = np.random.default_rng([self.seed, self._stream, place])
        size, k, tries = self.canvas, self.num_clutter, _PLACEMENT_TRIES
        # one draw as Python floats: much cheaper than many small numpy operations
        u = rng.random(3 + (4 + 2 * tries) * k).tolist()
        lo, hi = self.scale
        side = lo + int(u[0] * (hi - lo + 1))
        gx, gy = int(u[1] * (size - side + 1)), int(u[2] * (size - side + 1))
        n, (h, w), (lo, hi) = len(self._siblings), self.images.shape[1:], self.clutter_size
        fragments = []
        for f in range(k):
            u_src, u_side, u_ox, u_oy, *u_pos = u[3 + (4 + 2 * tries) * f : 3 + (4 + 2 * tries) * (f + 1)]
            j = int(u_src * (n - 1))
            j = int(self._siblings[j + (j >= place)])  # never the garment itself
            c = lo + int(u_side * (hi - lo + 1))
            x0, y0, x1, y1 = self._boxes[j]
            # crop origin so the crop overlaps the source garment, often across an edge
            ox = min(max(x0 - c // 2 + int(u_ox * (x1 - x0 + 1)), 0), w - c)
            oy = min(max(y0 - c // 2 + int(u_oy * (y1 - y0 + 1)), 0), h - c)
            for t in range(tries):  # first position that keeps the garment unoccluded
                px, py = int(u_pos[2 * t] * (size - c + 1)), int(u_pos[2 * t + 1] * (size - c + 1))
                if px + c <= gx or px >= gx + side or py + c <= gy or py >= gy + side:
                    fragments.append((j, c, ox, oy, px, py))
                    break
        return (side, gx, gy), fragments

    def box(self, i: int) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` (exclusive ends) of the garment in sample ``i``.

        The box is the garment's visible extent: the non-dark part of the source
        image mapped through the resize, bilinear fringe included.
        """
        i = self._index(i)
        (side, x, y), _ = self._layout(i)
        bx0, by0, bx1, by1 = self._boxes[self._src[i]]
        h, w = self.images.shape[1:]
        box = (
            x + _first_covered(bx0, w, side),
            y + _first_covered(by0, h, side),
            x + _end_covered(bx1, w, side),
            y + _end_covered(by1, h, side),
        )
        if self.img_size == self.canvas:
            return box
        f = self.img_size / self.canvas
        return (int(box[0] * f), int(box[1] * f), math.ceil(box[2] * f), math.ceil(box[3] * f))

    def raw(self, i: int) -> np.ndarray:
        """Render sample ``i`` as a uint8 ``(img_size, img_size)`` array."""
        canvas = self.raw_canvas(i)
        if self.img_size == self.canvas:
            return canvas
        return _downsample(torch.from_numpy(canvas)[None], self.img_size)[0].numpy()

    def raw_canvas(self, i: int) -> np.ndarray:
        """Render sample ``i`` at the canvas size, as a uint8 ``(canvas, canvas)`` array."""
        i = self._index(i)
        (side, x, y), fragments = self._layout(i)
        canvas = np.zeros((self.canvas, self.canvas), dtype=np.uint8)
        for j, c, ox, oy, px, py in fragments:
            patch = canvas[py : py + c, px : px + c]
            np.maximum(patch, self.images[j, oy : oy + c, ox : ox + c], out=patch)
        patch = canvas[y : y + side, x : x + side]
        np.maximum(patch, resize_gray(self.images[self._src[i]], side), out=patch)
        return canvas

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return gray_to_tensor(self.raw(i), self.normalize), int(self.targets[i])


def _downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 ``(N, S, S)`` images to ``size`` (SAC-ViT's EE resize)."""
    small = F.interpolate(images[:, None].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
    return small[:, 0].round_().clamp_(0, 255).to(torch.uint8)


def materialize(
    dataset: Dataset, indices: Iterable[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-render a dataset into memory.

    Args:
        dataset: A dataset with ``raw(i)`` (uint8 ``(S, S)`` image), ``targets``
            and ``img_size``, e.g. :class:`ClutteredFashionMNIST`.
        indices: Samples to render (default: all, in order).

    Returns:
        ``(images, labels)``: uint8 ``(N, S, S)`` and int64 ``(N,)`` tensors,
        ready for :class:`TensorImageDataset`.
    """
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    size = dataset.img_size
    # a dataset drawn on a larger canvas is rendered there and downsampled in batches
    canvas = getattr(dataset, "canvas", size)
    render = dataset.raw_canvas if canvas != size else dataset.raw
    images = torch.empty((len(idx), size, size), dtype=torch.uint8)
    labels = np.empty(len(idx), dtype=np.int64)
    chunk = np.empty((min(len(idx), 1024), canvas, canvas), dtype=np.uint8)
    bar = tqdm(idx, desc="rendering", unit="img", disable=not sys.stderr.isatty(), leave=False)
    for k, i in enumerate(bar):
        chunk[k % len(chunk)] = render(i)
        labels[k] = dataset.targets[i]
        if k % len(chunk) == len(chunk) - 1 or k == len(idx) - 1:
            n = k % len(chunk) + 1
            block = torch.from_numpy(chunk[:n])
            images[k + 1 - n : k + 1] = _downsample(block, size) if canvas != size else block
    return images, torch.from_numpy(labels)


class TensorImageDataset(Dataset):
    """Serve pre-rendered uint8 images as normalised float32 3-channel tensors.

    Args:
        images: uint8 ``(N, H, W)`` grayscale or ``(N, C, H, W)`` with C in {1, 3}.
        labels: ``(N,)`` integer labels.
        normalize: Normalise with mean/std 0.5; otherwise values are in ``[0, 1]``.
        classes: Class names; default: Fashion-MNIST's if the labels fit, else
            ``"0", "1", ...``.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        normalize: bool = True,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.images = torch.as_tensor(images)
        self.targets = torch.as_tensor(labels, dtype=torch.int64)
        if self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if self.images.ndim not in (3, 4) or (self.images.ndim == 4 and self.images.shape[1] not in (1, 3)):
            raise ValueError(f"images must be (N, H, W) or (N, C, H, W) with C in 1/3, got {tuple(self.images.shape)}")
        if self.targets.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.targets.shape)}")
        if classes is None:
            n = int(self.targets.max()) + 1 if len(self.targets) else 0
            classes = FASHION_MNIST_CLASSES if n <= len(FASHION_MNIST_CLASSES) else [str(c) for c in range(n)]
        self.classes = list(classes)
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return gray_to_tensor(self.images[i], self.normalize), int(self.targets[i])
