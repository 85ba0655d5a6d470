"""Rebuild a trained model from its checkpoint alone: weights, class names, η, preprocessing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..engine.checkpoint import load_checkpoint

__all__ = ["from_pretrained", "load_predictor", "model_preprocess"]


def model_preprocess(model: nn.Module, meta: dict[str, Any]) -> Preprocess:
    """The checkpoint's recorded preprocessing; for a checkpoint that records none, the model's timm
    ``pretrained_cfg`` (mean/std 0.5 is taken as the gray Fashion-MNIST family), with a warning."""
    if meta.get("preprocess"):
        return Preprocess.from_dict(meta["preprocess"])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    gray = set(mean) == {0.5} and set(std) == {0.5}
    print(f"sacvit: {meta.get('path')} records no preprocessing; using the model's defaults "
          f"({'gray, mean/std 0.5' if gray else f'mean {mean}, std {std}'})", file=sys.stderr)
    return Preprocess(img_size=int(model.patch_embed.img_size[0]), grayscale=gray,
                      channels=model.patch_embed.proj.in_channels,
                      crop_pct=1.0 if gray else float(cfg.get("crop_pct", 0.875)),
                      interpolation="bilinear" if gray else cfg.get("interpolation", "bicubic"), mean=mean, std=std)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a ``sacvit train`` checkpoint, in eval mode, ready for ``predict``.

    Everything comes from the checkpoint: the timm model name and keyword arguments, the SAC-ViT
    configuration with its default exit threshold η (the calibrated one after ``sacvit
    calibrate``), the class names and the evaluation preprocessing.

    Args:
        path: a ``.safetensors`` checkpoint written by ``sacvit train`` (or ``save_checkpoint``).
        device: where to put the model.

    Returns:
        The model, with three more attributes: ``class_names`` (list of str), ``preprocess``
        (a :class:`~sacvit.data.preprocess.Preprocess`: ``model.preprocess(pil_image)`` is the
        evaluation tensor of one image) and ``checkpoint_meta`` (the decoded metadata). timm's
        ``pretrained_cfg`` carries the same input size, crop, interpolation, mean and std, so
        ``timm.data.resolve_data_config(model=model)`` agrees.

    Raises:
        FileNotFoundError, ValueError: a missing or unusable checkpoint (one-line messages).
    """
    model, meta = load_checkpoint(path, map_location=device)
    pre = model_preprocess(model, meta)
    model.class_names = list(meta["class_names"])
    model.preprocess = pre
    model.checkpoint_meta = meta
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(input_size=(pre.channels, pre.img_size, pre.img_size), crop_pct=pre.crop_pct,
               interpolation=pre.interpolation, mean=pre.mean, std=pre.std, num_classes=len(model.class_names))
    model.pretrained_cfg = cfg
    return model.eval()


def load_predictor(checkpoint: str | Path | None = None, onnx: str | Path | None = None, device: str = "cpu"):
    """A SAC-ViT predictor from a checkpoint (:func:`from_pretrained`) or an ONNX export folder
    (:class:`~sacvit.runtime.OnnxSACViT`); ``device`` ``"auto"`` picks CUDA when available.

    Raises:
        ValueError: neither or both given, or the checkpoint holds a plain ViT.
    """
    if (checkpoint is None) == (onnx is None):
        raise ValueError("give exactly one of a checkpoint and an ONNX export folder")
    if onnx is not None:
        from ..runtime import OnnxSACViT

        return OnnxSACViT(onnx)
    from ..bench.environment import resolve_device
    from ..model import SACViT

    model = from_pretrained(checkpoint, device=resolve_device(device))
    if not isinstance(model, SACViT):
        raise ValueError(f"{checkpoint} holds a plain ViT ({model.checkpoint_meta['model_name']}), not a SAC-ViT")
    return model
