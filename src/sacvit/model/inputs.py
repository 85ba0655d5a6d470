"""Input checks of SAC-ViT: clear ``ValueError`` s instead of shape errors deep inside a block."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_batch", "check_input", "nonfinite"]


def check_batch(x: Tensor, in_chans: int, img_size: tuple[int, int], patch: int) -> None:
    """Raise ``ValueError`` naming the problem unless ``x`` is a ``(B, in_chans, *img_size)`` batch."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a 4-D image batch (B, C, H, W), got {shape}")
    _, c, h, w = x.shape
    if c != in_chans:
        raise ValueError(f"expected {in_chans} channels, got {c} (input shape {tuple(x.shape)})")
    if h < patch or w < patch:
        raise ValueError(f"image {h}×{w} is smaller than one {patch}-px patch")
    if (h, w) != tuple(img_size):
        raise ValueError(f"expected {tuple(img_size)} px images, got {h}×{w}; "
                         f"resize the input or create the model with img_size=({h}, {w})")


def nonfinite(x: Tensor) -> Tensor:
    """0-dim bool tensor: does ``x`` hold a NaN or an infinity? One pass, no host sync."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.bool, device=x.device)
    lo, hi = torch.aminmax(x)  # NaN propagates into both, ±inf shows in one
    return ~(torch.isfinite(lo) & torch.isfinite(hi))


def check_input(x: Tensor, patch_embed, patch: int) -> None:
    """Raise ``ValueError`` naming the problem unless ``x`` is a finite batch for ``patch_embed``."""
    check_batch(x, patch_embed.proj.in_channels, tuple(patch_embed.img_size), patch)
    if x.is_floating_point() and bool(nonfinite(x)):
        raise ValueError("input contains NaN or infinite values")
