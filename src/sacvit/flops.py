"""Compute accounting in GMACs (fvcore convention: one multiply-add = 1 MAC).

Two independent ways to count, so that each checks the other:

* closed forms (:func:`vit_macs`, :func:`block_macs`, :func:`sac_block_macs`) that follow
  DESIGN.md: a block of ``N`` tokens of width ``D`` costs ``12·N·D²`` in its linear layers
  (qkv 3, proj 1, MLP 8 for an MLP ratio of 4) and ``2·N²·D`` in attention (``QKᵀ`` and ``AV``);
* :func:`measure_macs`, a measurement with :class:`torch.utils.flop_counter.FlopCounterMode`.
  On CPU, PyTorch dispatches ``F.scaled_dot_product_attention`` to
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which the counter has no formula for and
  silently counts as zero (DeiT-S then reads 4.24 instead of 4.6 GMACs). We register the SDPA
  formula for it (and for the math fallback) so attention is always included.

Layer norms, softmax, GELU, additions and interpolation are not counted, as in fvcore's defaults.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "block_macs",
    "sac_block_macs",
    "sac_block_macs_full",
    "vit_gmacs",
    "vit_macs",
    "measure_macs",
    "GIGA",
]

GIGA = 1e9


def linear_macs(n_tokens: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """MACs of the linear layers of one transformer block (qkv, proj, fc1, fc2)."""
    hidden = int(dim * mlp_ratio)
    return n_tokens * (4 * dim * dim + 2 * dim * hidden)


def block_macs(n_tokens: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """MACs of one standard ViT block over ``n_tokens`` tokens (``12ND² + 2N²D`` at ratio 4)."""
    return linear_macs(n_tokens, dim, mlp_ratio) + 2 * n_tokens * n_tokens * dim


def sac_block_macs(n_target: int, n_non_target: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """MACs of one SAC block: CLS + ``T`` target + ``M`` non-target tokens.

    Target queries attend to CLS + target keys, non-target queries to CLS + non-target keys,
    and the CLS query to every key: ``2D·[T(1+T) + M(1+M) + (1+T+M)]`` for attention.
    """
    t, m = n_target, n_non_target
    attn = 2 * dim * (t * (1 + t) + m * (1 + m) + (1 + t + m))
    return linear_macs(1 + t + m, dim, mlp_ratio) + attn


def sac_block_macs_full(n_target: int, n_non_target: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """MACs of one SAC block with full attention over its ``1 + T + M`` tokens (an ablation)."""
    return block_macs(1 + n_target + n_non_target, dim, mlp_ratio)


def patch_embed_macs(n_patches: int, patch_size: int, dim: int, in_chans: int = 3) -> int:
    """MACs of the patch embedding (a ``p×p`` stride-``p`` convolution) over ``n_patches``."""
    return n_patches * in_chans * patch_size * patch_size * dim


def vit_macs(
    grid: int | tuple[int, int],
    patch_size: int,
    dim: int,
    depth: int,
    num_classes: int,
    mlp_ratio: float = 4.0,
    in_chans: int = 3,
    num_prefix_tokens: int = 1,
) -> int:
    """MACs of a plain ViT forward (patch embed, ``depth`` blocks, head) for one image."""
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    n_patches = gh * gw
    n = n_patches + num_prefix_tokens
    return (
        patch_embed_macs(n_patches, patch_size, dim, in_chans)
        + depth * block_macs(n, dim, mlp_ratio)
        + dim * num_classes
    )


def vit_gmacs(model: Any) -> float:
    """Closed-form GMACs per image of a timm ``VisionTransformer`` (or SAC-ViT's plain backbone)
    at its input size: the one place where a plain ViT's compute is counted."""
    pe = model.patch_embed
    return vit_macs(tuple(pe.grid_size), pe.patch_size[0], model.embed_dim, len(model.blocks), model.num_classes,
                    model.blocks[0].mlp.fc1.out_features / model.embed_dim, pe.proj.in_channels,
                    model.num_prefix_tokens) / GIGA


def _sdpa_formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _missing_sdpa_ops() -> dict[Any, Callable[..., int]]:
    aten = torch.ops.aten
    mapping: dict[Any, Callable[..., int]] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math"):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_formula
    return mapping


def measure_macs(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` under :class:`FlopCounterMode` and return the MACs it performed.

    SDPA on CPU is mapped to the standard attention formula, so the count includes attention.
    ``FlopCounterMode`` counts one multiply-add as 2 FLOPs; the result is halved to MACs.
    """
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_missing_sdpa_ops()) as counter:
        fn()
    return counter.get_total_flops() // 2
