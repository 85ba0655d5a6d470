"""Closed-form compute of SAC-ViT's two stages per image (GMACs, fvcore convention; see :mod:`sacvit.flops`)."""

from __future__ import annotations

from typing import Any

from .. import flops, timm_ops

__all__ = ["gmacs_ee", "gmacs_sac"]


def gmacs_ee(model: Any) -> float:
    """GMACs of the EE stage of a :class:`~sacvit.model.sacvit.SACViT` for one image (GCA rows included)."""
    (h, w), d, depth = model.ee_grid, model.embed_dim, len(model.blocks)
    macs = flops.vit_macs((h, w), model.patch_size, d, depth, model.num_classes, timm_ops.mlp_ratio(model.blocks[0]),
                          model.patch_embed.proj.in_channels)
    macs += (depth - model.gca_start) * (h * w + 1) * d  # q_cls·Kᵀ of the GCA blocks
    return macs / flops.GIGA


def gmacs_sac(model: Any, n_target: int, n_non_target: int) -> float:
    """GMACs of the SAC stage (reuse MLP included) for one image with ``T`` target and ``M``
    non-target tokens."""
    d = model.embed_dim
    macs = flops.patch_embed_macs(n_target, model.patch_size, d, model.patch_embed.proj.in_channels)
    block = flops.sac_block_macs if model.sac_config.attention == "cluster" else flops.sac_block_macs_full
    macs += len(model.blocks) * block(n_target, n_non_target, d, timm_ops.mlp_ratio(model.blocks[0]))
    macs += d * model.num_classes
    if model.reuse is not None:
        h, w = model.ee_grid
        macs += h * w * 2 * d * model.reuse.mlp.fc1.out_features
    return macs / flops.GIGA
