"""The two block forward passes of SAC-ViT, over unmodified timm blocks.

* :func:`ee_block` — a plain block that can also return the CLS query's attention logits
  (one ``q_cls·Kᵀ`` matmul, never the ``N×N`` matrix), for the global class attention;
* :func:`cluster_block` — a block whose attention is restricted to the SAC clusters.

Both reuse every weight of a timm :class:`~timm.models.vision_transformer.Block` (norms, qkv,
q/k norms, projection, layer scale, drop path, MLP); only the attention product differs. All
products are dense :func:`torch.nn.functional.scaled_dot_product_attention` calls over views of
one ``qkv`` projection, so no ``N×N`` mask is built and nothing syncs with the host.

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
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import Tensor, nn

__all__ = ["check_blocks", "cluster_block", "ee_block"]


def check_blocks(blocks: nn.Sequential) -> None:
    """Raise ``ValueError`` unless every block is timm's standard pre-norm ``Block``/``Attention``.

    The two forward passes below re-run those modules' parts; another block type (post-norm,
    parallel, gated attention …) would be silently computed wrong.
    """
    for i, blk in enumerate(blocks):
        if type(blk) is not Block or type(getattr(blk, "attn", None)) is not Attention:
            raise ValueError(f"block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}; "
                             f"SAC-ViT runs only timm's standard Block with Attention (block_fn=Block)")
        if getattr(blk.attn, "gate", None) is not None:
            raise ValueError(f"block {i} uses gated attention, which SAC-ViT does not support")


def _qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def _finish(block: nn.Module, x: Tensor, y: Tensor, out: Tensor) -> Tensor:
    """Output projection of the attention result ``out`` ``(B, N, H, d)``, residuals and MLP."""
    attn = block.attn
    B, N, _, _ = out.shape
    out = attn.proj_drop(attn.proj(attn.norm(out.reshape(B, N, attn.num_heads * attn.head_dim))))
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _dropout(attn: nn.Module) -> float:
    return attn.attn_drop.p if attn.training else 0.0


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
    attn = block.attn
    y = block.norm1(x)
    q, k, v = _qkv(attn, y)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=_dropout(attn)).transpose(1, 2)
    row = (q[:, :, :1] @ k.transpose(-2, -1)).squeeze(2) * attn.scale if cls_logits else None
    return _finish(block, x, y, out), row


def cluster_block(block: nn.Module, x: Tensor, n_target: int, within_clusters: bool = True) -> Tensor:
    """One timm block on a ``[target (T), CLS, non-target (M)]`` sequence.

    Args:
        block: a timm ``Block``.
        x: ``(B, T + 1 + M, D)`` tokens.
        n_target: ``T``.
        within_clusters: attention within each cluster (CLS sees all); ``False`` runs full
            attention over the whole sequence (the ablation of the cluster attention).
    """
    attn = block.attn
    y = block.norm1(x)
    q, k, v = _qkv(attn, y)
    t, n, p = n_target, q.shape[2], _dropout(attn)
    if not within_clusters or n == t + 1:  # full attention, or the whole image is target
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2)
    else:
        parts = [
            F.scaled_dot_product_attention(q[:, :, :t], k[:, :, :t + 1], v[:, :, :t + 1], dropout_p=p),
            F.scaled_dot_product_attention(q[:, :, t:t + 1], k, v, dropout_p=p),
            F.scaled_dot_product_attention(q[:, :, t + 1:], k[:, :, t:], v[:, :, t:], dropout_p=p),
        ]
        out = torch.cat([part.transpose(1, 2) for part in parts], dim=1)
    return _finish(block, x, y, out)
