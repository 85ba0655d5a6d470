"""Rebuild a trained model from its checkpoint alone: weights, class names, η, preprocessing.

:func:`from_pretrained` returns a :class:`Pretrained`: the ``nn.Module`` (``.model``) together
with what its checkpoint says about running it (``.meta``, a
:class:`~sacvit.io.checkpoint.CheckpointMeta`, and ``.preprocess``). Nothing is attached to the
module itself; ``Pretrained`` forwards ``predict`` / ``__call__`` to it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from PIL import Image

from ..data.preprocess import Preprocess, open_image
from ..devices import resolve_device
from ..io.checkpoint import CheckpointMeta, load_checkpoint
from ..model import Prediction, SACViT
from .predict import _results

__all__ = ["Classification", "Pretrained", "from_pretrained", "load_predictor", "model_preprocess"]


def model_preprocess(model: nn.Module, meta: CheckpointMeta) -> Preprocess:
    """The checkpoint's recorded preprocessing; for a checkpoint that records none, the model's timm
    ``pretrained_cfg`` (mean/std 0.5 is taken as the gray Fashion-MNIST family), with a warning."""
    if meta.preprocess:
        return Preprocess.from_dict(meta.preprocess)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    gray = set(mean) == {0.5} and set(std) == {0.5}
    print(f"sacvit: {meta.path} records no preprocessing; using the model's defaults "
          f"({'gray, mean/std 0.5' if gray else f'mean {mean}, std {std}'})", file=sys.stderr)
    return Preprocess(img_size=int(model.patch_embed.img_size[0]), grayscale=gray,
                      channels=model.patch_embed.proj.in_channels,
                      crop_pct=1.0 if gray else float(cfg.get("crop_pct", 0.875)),
                      interpolation="bilinear" if gray else cfg.get("interpolation", "bicubic"), mean=mean, std=std)


@dataclass(frozen=True)
class Classification:
    """What :meth:`Pretrained.classify` says about one image.

    Attributes:
        label, score: the predicted class name and its probability.
        stage: ``"ee"`` (answered by the early exit) or ``"sac"`` (the clustered stage).
        top_k: ``(label, score)`` pairs, most probable first.
        box: the SAC target window ``(x0, y0, x1, y1)`` in the original image's pixels (``None`` after an exit).
        size: the original image's ``(width, height)``.
        threshold: the exit threshold η used.
        gmacs: the compute spent on the image.
        path: the file, when a path was given.
    """

    label: str
    score: float
    stage: str
    top_k: list[tuple[str, float]]
    box: tuple[int, int, int, int] | None
    size: tuple[int, int]
    threshold: float
    gmacs: float
    path: str | None = None


class Pretrained:
    """A trained model with what its checkpoint says about running it.

    Attributes:
        model: the ``nn.Module`` in eval mode (a :class:`~sacvit.model.SACViT` or a plain timm ViT).
        meta: the checkpoint's metadata.
        preprocess: ``preprocess(pil_image)`` is the evaluation tensor of one image.
    """

    def __init__(self, model: nn.Module, meta: CheckpointMeta, preprocess: Preprocess) -> None:
        self.model, self.meta, self.preprocess = model.eval(), meta, preprocess

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def is_sac(self) -> bool:
        return isinstance(self.model, SACViT)

    @property
    def threshold(self) -> float | None:
        """The default exit threshold η (the calibrated one after ``sacvit calibrate``)."""
        return self.meta.threshold

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "Pretrained":
        self.model.to(resolve_device(device))
        return self

    def predict(self, x: Tensor, threshold: float | None = None) -> Prediction:
        """:meth:`SACViT.predict <sacvit.model.SACViT.predict>` on a batch of preprocessed images."""
        if not self.is_sac:
            raise ValueError(f"{self.meta.path} holds a plain ViT ({self.meta.model_name}): it has no early exit; "
                             f"call it on a batch for logits")
        return self.model.predict(x, threshold)

    def classify(self, images: Any, *, top_k: int = 5, threshold: float | None = None,
                 batch_size: int = 32) -> "Classification | list[Classification]":
        """Classify image files or PIL images in one call.

        Args:
            images: a path, a ``PIL.Image``, or a list of them (a list gives a list).
            top_k: how many (label, score) pairs each result lists.
            threshold: the exit threshold η (default: the checkpoint's, the calibrated one when calibrated).

        Returns:
            Per image a :class:`Classification`: ``label``, ``score``, ``stage`` (``"ee"``/``"sac"``),
            ``top_k``, and ``box`` — the SAC target window in the *original* image's pixels
            ``(x0, y0, x1, y1)``, ``None`` when the image exited at EE.

        Raises:
            ValueError: an unreadable file (the message names it), or a plain ViT.
        """
        single = isinstance(images, (str, Path, Image.Image))
        items = [images] if single else list(images)
        thr = self.threshold if threshold is None else float(threshold)
        if thr is None:
            raise ValueError(f"{self.meta.model_name} is a plain ViT: classify needs a SAC-ViT")
        out: list[Classification] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            pics = [item if isinstance(item, Image.Image) else open_image(item) for item in chunk]
            x = torch.stack([self.preprocess(pic) for pic in pics]).to(self.device)
            names = [getattr(item, "filename", "") or "" if isinstance(item, Image.Image) else str(item)
                     for item in chunk]
            results = _results(self.predict(x, thr), names, self.class_names, top_k, thr, [pic.size for pic in pics],
                               self.preprocess)
            out += [Classification(label=r.top_k[0][0], score=r.top_k[0][2], stage=r.stage.lower(),
                                   top_k=[(c, q) for c, _, q in r.top_k], box=r.box, size=r.size, threshold=thr,
                                   gmacs=r.gmacs, path=r.path or None) for r in results]
        return out[0] if single else out

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(x)

    def __repr__(self) -> str:
        return (f"Pretrained({self.meta.model_name}, {len(self.class_names)} classes, η={self.threshold}, "
                f"from {self.meta.path})")


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """The model of a ``sacvit train`` checkpoint, ready for ``predict``.

    Everything comes from the checkpoint: the timm model name and keyword arguments, the SAC-ViT
    configuration with its default exit threshold η (the calibrated one after ``sacvit
    calibrate``), the class names and the evaluation preprocessing. The module's timm
    ``pretrained_cfg`` is set to the same input size, crop, interpolation, mean and std, so
    ``timm.data.resolve_data_config(model=p.model)`` agrees.

    Args:
        path: a ``.safetensors`` checkpoint written by ``sacvit train`` (or ``save_checkpoint``).
        device: where to put the model (``"auto"``: CUDA when available).

    Raises:
        FileNotFoundError, ValueError: a missing or unusable checkpoint (one-line messages).
    """
    model, meta = load_checkpoint(path, map_location=resolve_device(device))
    pre = model_preprocess(model, meta)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(input_size=(pre.channels, pre.img_size, pre.img_size), crop_pct=pre.crop_pct,
               interpolation=pre.interpolation, mean=pre.mean, std=pre.std, num_classes=len(meta.class_names))
    model.pretrained_cfg = cfg  # timm's own attribute
    return Pretrained(model, meta, pre)


def load_predictor(checkpoint: str | Path | None = None, onnx: str | Path | None = None, device: str = "cpu") -> Any:
    """A SAC-ViT predictor from a checkpoint (:func:`from_pretrained`) or an ONNX export folder
    (:class:`~sacvit.runtime.OnnxSACViT`); ``device`` ``"auto"`` picks CUDA when available.

    Raises:
        ValueError: neither or both given, or the checkpoint holds a plain ViT.
    """
    if (checkpoint is None) == (onnx is None):
        raise ValueError("give exactly one of a checkpoint and an ONNX export folder")
    if onnx is not None:
        from ..runtime import OnnxSACViT  # onnxruntime is an optional dependency

        return OnnxSACViT(onnx)
    pretrained = from_pretrained(checkpoint, device=device)
    if not pretrained.is_sac:
        raise ValueError(f"{checkpoint} holds a plain ViT ({pretrained.meta.model_name}), not a SAC-ViT")
    return pretrained
