"""The two block forward passes of SAC-ViT, over unmodified timm blocks.

* :func:`ee_block` — a plain block that can also return the CLS query's attention logits
  (one ``q_cls·Kᵀ`` matmul, never the ``N×N`` matrix), for the global class attention;
* :func:`cluster_block` — a block whose attention is restricted to the SAC clusters.

Both reuse every weight of a timm :class:`~timm.models.vision_transformer.Block` through
:mod:`sacvit.timm_ops` (the one module that knows the block's internals); only the attention
product differs. All products are dense :func:`torch.nn.functional.scaled_dot_product_attention`
calls over views of one ``qkv`` projection, so no ``N×N`` mask is built and nothing syncs with the
host.

SAC sequences are laid out ``[target (T), CLS, non-target (M)]``:

* target queries attend to target + CLS keys, the slice ``[0, T]``;
* the CLS query attends to every key;
* non-target queries attend to CLS + non-target keys, the slice ``[T, N)``.

With CLS between the two clusters both key groups are contiguous slices, so the three SDPA calls
read views (no key/value copy), and their outputs are concatenated once along the token axis in
the ``(B, N, H, d)`` layout that the output projection reads without another copy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import timm_ops as ops

__all__ = ["cluster_block", "ee_block"]


def ee_block(block: nn.Module, x: Tensor, cls_logits: bool = False) -> tuple[Tensor, Tensor | None]:
    """One plain timm block on ``(B, N, D)`` tokens, CLS first.

    Args:
        block: a timm ``Block``.
        x: the tokens.
        cls_logits: also return the CLS query's scaled attention logits to every key,
            ``(B, H, N)``, so that a caller collecting them over blocks runs the softmax and the
            head average once for all blocks.

    Returns:
        The block output, and the CLS logits or ``None``.
    """
    return ops.block_forward_with_cls_logits(block, x, cls_logits)


def cluster_block(block: nn.Module, x: Tensor, n_target: int, within_clusters: bool = True) -> Tensor:
    """One timm block on a ``[target (T), CLS, non-target (M)]`` sequence.

    Args:
        block: a timm ``Block``.
        x: ``(B, T + 1 + M, D)`` tokens.
        n_target: ``T``.
        within_clusters: attention within each cluster (CLS sees all); ``False`` runs full
            attention over the whole sequence (the ablation of the cluster attention), which is
            exactly timm's ``Block.forward``.
    """
    q, k, v = ops.qkv(block, x)
    t, n = n_target, q.shape[2]
    if not within_clusters or n == t + 1:  # full attention, or the whole image is target
        out = ops.attend(block, q, k, v)
    else:
        out = torch.cat([
            ops.attend(block, q[:, :, :t], k[:, :, :t + 1], v[:, :, :t + 1]),
            ops.attend(block, q[:, :, t:t + 1], k, v),
            ops.attend(block, q[:, :, t + 1:], k[:, :, t:], v[:, :, t:]),
        ], dim=1)
    return ops.mlp_residual(block, ops.attn_residual(block, x, ops.attn_out(block, out)))
