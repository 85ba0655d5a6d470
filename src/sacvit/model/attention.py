"""Block forward passes over timm blocks: plain attention with the CLS attention row, and
attention restricted to the clusters of the SAC stage.

Both reuse every weight of a timm :class:`~timm.models.vision_transformer.Block` (norms, qkv,
q/k norms, projection, layer scale, drop path, MLP); only the attention product differs. All
products are dense :func:`torch.nn.functional.scaled_dot_product_attention` calls over gathered
token groups, so no ``N×N`` mask is built.

SAC sequences are laid out as ``[CLS, target (T), non-target (M)]`` (``cls_mid=False``, the
reference layout) or as ``[target (T), CLS, non-target (M)]`` (``cls_mid=True``, the fast layout
that :class:`~sacvit.model.sacvit.SACViT` uses):

* target queries attend to CLS + target keys;
* non-target queries attend to CLS + non-target keys;
* the CLS query attends to every key.

With CLS between the two clusters, both key groups are contiguous slices of the one ``qkv``
projection (``[0, T]`` and ``[T, N)``), so the three SDPA calls read views, no key/value copy is
made, and the three outputs are concatenated once along the token axis in the ``(B, N, H, d)``
layout that the output projection reads without another copy. Nothing here syncs with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["block_forward", "cls_attention", "cls_logits"]


def _qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def _project(attn: nn.Module, x: Tensor, out: Tensor) -> Tensor:
    """Output projection of attention results ``out`` in ``(B, N, H, d)`` order."""
    B, N, _, _ = out.shape
    out = attn.norm(out.reshape(B, N, attn.num_heads * attn.head_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def cls_logits(q: Tensor, k: Tensor) -> Tensor:
    """Unscaled attention logits of the CLS query (token 0) to every key, ``(B, H, N)``.

    Only the CLS row is computed (``q_cls·Kᵀ``), never the ``N×N`` matrix: one matmul.
    """
    return (q[:, :, :1] @ k.transpose(-2, -1)).squeeze(2)


def cls_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Head-averaged softmax attention of the CLS query to the patch keys, ``(B, N − 1)``.

    Only the CLS row is computed (``q_cls·Kᵀ``), never the ``N×N`` matrix.
    """
    return (cls_logits(q, k) * scale).softmax(dim=-1).mean(dim=1)[:, 1:]


def _clustered_sdpa(q: Tensor, k: Tensor, v: Tensor, n_target: int, dropout: float) -> Tensor:
    """Cluster attention for the ``[CLS, target, non-target]`` layout; ``(B, N, H, d)`` output."""
    t = 1 + n_target
    parts = [
        F.scaled_dot_product_attention(q[:, :, :1], k, v, dropout_p=dropout),
        F.scaled_dot_product_attention(q[:, :, 1:t], k[:, :, :t], v[:, :, :t], dropout_p=dropout),
    ]
    if q.shape[2] > t:
        k_nt = torch.cat([k[:, :, :1], k[:, :, t:]], dim=2)
        v_nt = torch.cat([v[:, :, :1], v[:, :, t:]], dim=2)
        parts.append(F.scaled_dot_product_attention(q[:, :, t:], k_nt, v_nt, dropout_p=dropout))
    return torch.cat([p.transpose(1, 2) for p in parts], dim=1)


def _clustered_sdpa_mid(q: Tensor, k: Tensor, v: Tensor, n_target: int, dropout: float) -> Tensor:
    """Cluster attention for the ``[target, CLS, non-target]`` layout; ``(B, N, H, d)`` output.

    Every key group is a contiguous slice (a view): target over ``[0, T]``, CLS over all,
    non-target over ``[T, N)``. Without non-target tokens it is one dense SDPA call.
    """
    t, n = n_target, q.shape[2]
    if n == t + 1:  # the whole image is target: plain attention
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).transpose(1, 2)
    parts = [
        F.scaled_dot_product_attention(q[:, :, :t], k[:, :, :t + 1], v[:, :, :t + 1], dropout_p=dropout),
        F.scaled_dot_product_attention(q[:, :, t:t + 1], k, v, dropout_p=dropout),
        F.scaled_dot_product_attention(q[:, :, t + 1:], k[:, :, t:], v[:, :, t:], dropout_p=dropout),
    ]
    return torch.cat([p.transpose(1, 2) for p in parts], dim=1)


def block_forward(
    block: nn.Module,
    x: Tensor,
    n_target: int | None = None,
    want_cls_attn: bool = False,
    cls_mid: bool = False,
    want_cls_logits: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """One timm ViT block with optional cluster-restricted attention.

    Args:
        block: a timm ``Block`` (pre-norm, ``attn`` of timm's ``Attention`` layout).
        x: ``(B, N, D)`` tokens, CLS first.
        n_target: ``None`` for full self-attention; otherwise the number ``T`` of target tokens
            that follow CLS, the rest being the non-target cluster.
        want_cls_attn: also return the head-averaged CLS→patch attention ``(B, N − 1)``
            (CLS-first layout only).
        cls_mid: with ``n_target``, the layout is ``[target (T), CLS, non-target]`` instead of
            ``[CLS, target, non-target]`` (the fast layout: no key/value copies).
        want_cls_logits: instead, return the CLS query's *scaled* logits to every key
            ``(B, H, N)`` (one matmul), so that a caller collecting them over blocks can run the
            softmax and head average once for all blocks.

    Returns:
        The block output and the CLS attention row or logits (or ``None``).
    """
    attn = block.attn
    y = block.norm1(x)
    q, k, v = _qkv(attn, y)
    dropout = attn.attn_drop.p if attn.training else 0.0
    if n_target is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).transpose(1, 2)
    elif cls_mid:
        out = _clustered_sdpa_mid(q, k, v, n_target, dropout)
    else:
        out = _clustered_sdpa(q, k, v, n_target, dropout)
    if want_cls_attn:
        cls_attn = cls_attention(q, k, attn.scale)
    elif want_cls_logits:
        cls_attn = cls_logits(q, k) * attn.scale
    else:
        cls_attn = None
    x = x + block.drop_path1(block.ls1(_project(attn, y, out)))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, cls_attn
