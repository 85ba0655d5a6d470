"""Block forward passes over timm blocks: plain attention with the CLS attention row, and
attention restricted to the clusters of the SAC stage.

Both reuse every weight of a timm :class:`~timm.models.vision_transformer.Block` (norms, qkv,
q/k norms, projection, layer scale, drop path, MLP); only the attention product differs. All
products are dense :func:`torch.nn.functional.scaled_dot_product_attention` calls over gathered
token groups, so no ``N×N`` mask is built.

SAC sequences are laid out as ``[CLS, target (T), non-target (M)]``:

* target queries attend to CLS + target keys;
* non-target queries attend to CLS + non-target keys;
* the CLS query attends to every key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["block_forward", "cls_attention"]


def _qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def _project(attn: nn.Module, x: Tensor, out: Tensor) -> Tensor:
    B, _, N, _ = out.shape
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def cls_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Head-averaged softmax attention of the CLS query to the patch keys, ``(B, N − 1)``.

    Only the CLS row is computed (``q_cls·Kᵀ``), never the ``N×N`` matrix.
    """
    row = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
    return row.softmax(dim=-1).mean(dim=1)[:, 0, 1:]


def _clustered_sdpa(q: Tensor, k: Tensor, v: Tensor, n_target: int, dropout: float) -> Tensor:
    t = 1 + n_target
    parts = [
        F.scaled_dot_product_attention(q[:, :, :1], k, v, dropout_p=dropout),
        F.scaled_dot_product_attention(q[:, :, 1:t], k[:, :, :t], v[:, :, :t], dropout_p=dropout),
    ]
    if q.shape[2] > t:
        k_nt = torch.cat([k[:, :, :1], k[:, :, t:]], dim=2)
        v_nt = torch.cat([v[:, :, :1], v[:, :, t:]], dim=2)
        parts.append(F.scaled_dot_product_attention(q[:, :, t:], k_nt, v_nt, dropout_p=dropout))
    return torch.cat(parts, dim=2)


def block_forward(
    block: nn.Module,
    x: Tensor,
    n_target: int | None = None,
    want_cls_attn: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """One timm ViT block with optional cluster-restricted attention.

    Args:
        block: a timm ``Block`` (pre-norm, ``attn`` of timm's ``Attention`` layout).
        x: ``(B, N, D)`` tokens, CLS first.
        n_target: ``None`` for full self-attention; otherwise the number ``T`` of target tokens
            that follow CLS, the rest being the non-target cluster.
        want_cls_attn: also return the head-averaged CLS→patch attention ``(B, N − 1)``.

    Returns:
        The block output and the CLS attention row (or ``None``).
    """
    attn = block.attn
    y = block.norm1(x)
    q, k, v = _qkv(attn, y)
    dropout = attn.attn_drop.p if attn.training else 0.0
    if n_target is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    else:
        out = _clustered_sdpa(q, k, v, n_target, dropout)
    cls_attn = cls_attention(q, k, attn.scale) if want_cls_attn else None
    x = x + block.drop_path1(block.ls1(_project(attn, y, out)))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, cls_attn
