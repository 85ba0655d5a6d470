"""The models a benchmark compares SAC-ViT with, built from its own weights.

* :func:`plain_twin` — a plain timm ``VisionTransformer`` carrying a SAC-ViT's backbone weights,
  at any input size (the DeiT baseline at full resolution, the same ViT at the EE resolution);
* :func:`downsample` — the EE stage's resize, so that the EE-resolution row pays for it too;
* :func:`exit_threshold` — the η under which a given share of images exits (for random weights,
  whose confidences are all alike).
"""

from __future__ import annotations

import re
from typing import Any

import timm
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .. import timm_ops

__all__ = ["plain_twin", "plain_name", "downsample", "ee_pixels", "exit_threshold"]


def ee_pixels(model: nn.Module) -> tuple[int, int]:
    """Side of the EE-stage image of a SAC-ViT, in pixels."""
    p = model.patch_size
    return model.ee_grid[0] * p, model.ee_grid[1] * p


def downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The EE stage's downsampling: bilinear with antialiasing, as in ``SACViT.forward_ee``."""
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def plain_name(sac_name: str) -> str:
    """The registered timm name of the plain ViT of a SAC-ViT variant, or ``"vit"`` if none."""
    rest = re.sub(r"^(sacvit|cfvit|lfvit|dvt)_", "", sac_name)
    for candidate in (rest, f"deit_{rest}"):
        if timm.is_model(candidate):
            return candidate
    return "vit"


def plain_twin(model: nn.Module, img_size: int | tuple[int, int] | None = None,
               name: str | None = None, **kwargs: Any) -> nn.Module:
    """A plain timm ``VisionTransformer`` carrying ``model``'s backbone weights.

    The same weights are loaded (``reuse.*`` dropped) and the position embeddings resampled to
    ``img_size`` exactly as ``SACViT`` resamples them for its EE grid, so at the EE resolution its
    logits equal ``SACViT.forward_ee``'s (this is what ``load_backbone_weights`` does for a file).

    Args:
        model: a SAC-ViT or plain timm ViT.
        img_size: input side of the twin (default: ``model``'s).
        name: a timm model name to build (e.g. ``deit_small_patch16_224``); when it is not
            registered or its architecture does not match, a ``VisionTransformer`` with
            ``model``'s geometry is built instead.
        **kwargs: extra ``timm.create_model`` arguments for ``name`` (``depth``, …).
    """
    pe = model.patch_embed
    size = tuple(pe.img_size) if img_size is None else (
        (img_size, img_size) if isinstance(img_size, int) else tuple(img_size))
    geometry = dict(
        img_size=size, patch_size=pe.patch_size, in_chans=pe.proj.in_channels, embed_dim=model.embed_dim,
        depth=len(model.blocks), num_classes=model.num_classes, **timm_ops.block_args(model.blocks[0]),
    )
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("reuse.")}
    grid = (size[0] // pe.patch_size[0], size[1] // pe.patch_size[1])
    if grid != tuple(pe.grid_size):
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid),
                                                    old_size=list(pe.grid_size), num_prefix_tokens=1)
    candidates = []
    if name and timm.is_model(name):
        candidates.append(lambda: timm.create_model(name, **{**kwargs, "img_size": size,
                                                             "num_classes": model.num_classes}))
    candidates.append(lambda: VisionTransformer(**geometry))
    err: Exception | None = None
    for make in candidates:
        try:
            twin = make()
            twin.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as e:  # architecture mismatch: next candidate
            err = e
            continue
        param = next(model.parameters())
        return twin.to(device=param.device, dtype=param.dtype).eval()
    raise ValueError(f"cannot build a plain ViT twin of {type(model).__name__}: {err}")


def exit_threshold(confidence: Tensor, share: float) -> float:
    """The threshold η under which a fraction ``share`` of ``confidence`` exits (``conf ≥ η``).

    ``round(share · n)`` images exit: η is the midpoint between the k-th and (k+1)-th largest
    confidence, so a recomputation with rounding-level differences exits the same images.
    ``share = 0`` gives 2.0 (every image to SAC), ``share = 1`` gives 0.0 (every image exits).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"exit share must be in [0, 1], got {share}")
    c = confidence.detach().float().flatten().sort(descending=True).values.cpu()
    k = round(share * c.numel())
    if k <= 0:
        return 2.0
    if k >= c.numel():
        return 0.0
    return float((c[k - 1] + c[k]) / 2)
