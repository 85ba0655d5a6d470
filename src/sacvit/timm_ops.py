"""The one module that reaches into timm's ``Block`` / ``Attention`` / ``VisionTransformer`` internals.

SAC-ViT's two block passes (:mod:`sacvit.model.attention`) and the token-reduction peers
(:mod:`sacvit.peers`) all run timm's own weights with one change in the middle of a block: a
restricted attention product, the CLS query's attention row, a merge or a drop between the
attention and the MLP. Every piece of a timm block they re-run is written here once, in the order
``Block.forward`` runs it::

    x = x + drop_path1(ls1(proj_drop(proj(norm(attention(q_norm(q), k_norm(k), v))))))   # q, k, v = qkv(norm1(x))
    x = x + drop_path2(ls2(mlp(norm2(x))))

* :func:`qkv` — ``norm1`` → ``qkv`` → head split → ``q_norm`` / ``k_norm``;
* :func:`attend` — the attention product (SDPA) with the block's attention dropout;
* :func:`cls_logits` — the CLS query's scaled attention logits (``q_cls·Kᵀ·scale``);
* :func:`attn_out` — head merge → ``attn.norm`` (timm's ``scale_attn_norm``) → ``proj`` → ``proj_drop``;
* :func:`attn_residual` / :func:`mlp_residual` — the two residual branches with ``ls1``/``ls2``
  (layer scale) and ``drop_path1``/``drop_path2``;
* :func:`attention_half`, :func:`block_forward`, :func:`block_forward_with_cls_logits`,
  :func:`block_forward_with_logits` — the compositions the callers use; :func:`block_forward`
  equals ``Block.forward`` (tested over ``qk_norm``, layer scale and ``scale_attn_norm``);
* :func:`embed_tokens`, :func:`mlp_widths`, :func:`mlp_ratio`, :func:`block_args`, :func:`head_dim` — the ViT
  stem and block shapes.

:func:`check_blocks` refuses every block these functions would compute wrong (another block type,
gated attention). Nothing here syncs with the host or builds an ``N×N`` mask (except
:func:`block_forward_with_logits`, whose point is the ``N×N`` logits).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

__all__ = ["check_blocks", "qkv", "attend", "cls_logits", "attn_out", "attn_residual", "mlp_residual",
           "attention_half", "block_forward", "block_forward_with_cls_logits", "block_forward_with_logits",
           "embed_tokens", "mlp_widths", "mlp_ratio", "block_args", "head_dim"]


def check_blocks(blocks: nn.Sequential) -> None:
    """Raise ``ValueError`` unless every block is timm's standard pre-norm ``Block``/``Attention``.

    The functions below re-run those modules' parts; another block type (post-norm, parallel,
    gated attention …) would be silently computed wrong.
    """
    for i, blk in enumerate(blocks):
        if type(blk) is not Block or type(getattr(blk, "attn", None)) is not Attention:
            raise ValueError(f"block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}; "
                             f"SAC-ViT runs only timm's standard Block with Attention (block_fn=Block)")
        if getattr(blk.attn, "gate", None) is not None:
            raise ValueError(f"block {i} uses gated attention, which SAC-ViT does not support")


def qkv(blk: Block, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(q, k, v)``, each ``(B, H, N, d)``, of the block input ``x`` ``(B, N, D)``: ``norm1``, the
    ``qkv`` projection, the head split and the ``q_norm`` / ``k_norm`` (identity without ``qk_norm``)."""
    attn = blk.attn
    B, N, _ = x.shape
    heads = attn.qkv(blk.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = heads.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attend(blk: Block, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """``softmax(q·Kᵀ·scale + bias)·V`` with the block's attention dropout (in training), as one
    SDPA call, in the ``(B, N_q, H, d)`` layout :func:`attn_out` reads."""
    p = blk.attn.attn_drop.p if blk.attn.training else 0.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p).transpose(1, 2)


def cls_logits(blk: Block, q: Tensor, k: Tensor) -> Tensor:
    """The CLS query's (token 0) scaled attention logits to every key, ``(B, H, N)`` — one
    ``q_cls·Kᵀ`` matmul, never the ``N×N`` matrix."""
    return (q[:, :, :1] @ k.transpose(-2, -1)).squeeze(2) * blk.attn.scale


def attn_out(blk: Block, o: Tensor) -> Tensor:
    """Attention result ``o`` ``(B, N, H, d)`` → ``(B, N, D)``: head merge, ``attn.norm`` (timm's
    ``scale_attn_norm``; identity by default), output projection and its dropout."""
    attn = blk.attn
    B, N = o.shape[:2]
    return attn.proj_drop(attn.proj(attn.norm(o.reshape(B, N, attn.num_heads * attn.head_dim))))


def attn_residual(blk: Block, x: Tensor, a: Tensor) -> Tensor:
    """``x + drop_path1(ls1(a))``: the attention branch ``a`` (from :func:`attn_out`) added back."""
    return x + blk.drop_path1(blk.ls1(a))


def mlp_residual(blk: Block, x: Tensor) -> Tensor:
    """The second half of a block: ``x + drop_path2(ls2(mlp(norm2(x))))``."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def attention_half(blk: Block, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The first half of a block, ``x + attention(x)``, with an optional additive logit bias
    (broadcastable to ``(B, H, N, N)``); also returns the normed ``q`` and ``k`` ``(B, H, N, d)``
    (what ToMe's matching and EViT's class attention read)."""
    q, k, v = qkv(blk, x)
    return attn_residual(blk, x, attn_out(blk, attend(blk, q, k, v, bias))), q, k


def block_forward(blk: Block, x: Tensor) -> Tensor:
    """``Block.forward(x)`` from the parts above (equal to timm's; tested)."""
    return mlp_residual(blk, attention_half(blk, x)[0])


def block_forward_with_cls_logits(blk: Block, x: Tensor, want: bool = True) -> tuple[Tensor, Tensor | None]:
    """``Block.forward(x)`` and, if ``want``, the CLS query's attention logits (:func:`cls_logits`)
    from the same ``q``/``k`` (``None`` otherwise)."""
    q, k, v = qkv(blk, x)
    row = cls_logits(blk, q, k) if want else None
    x = attn_residual(blk, x, attn_out(blk, attend(blk, q, k, v)))
    return mlp_residual(blk, x), row


def block_forward_with_logits(blk: Block, x: Tensor, bias: Tensor | None = None,
                              want: bool = True) -> tuple[Tensor, Tensor | None]:
    """``Block.forward(x)`` with an additive attention-logit ``bias`` (broadcastable to
    ``(B, H, N, N)``) and, if ``want``, the ``(B, H, N, N)`` logits ``q·Kᵀ·scale + bias`` it used.

    With ``want`` the attention is computed explicitly (logits, softmax, attention dropout, ``·V``),
    so the logits come from the same ``q``/``k``; without it, one SDPA call with ``bias`` as its
    float ``attn_mask`` (and ``None`` returned). With ``bias=None`` both equal ``Block.forward`` (tested).
    """
    q, k, v = qkv(blk, x)
    if not want:
        return mlp_residual(blk, attn_residual(blk, x, attn_out(blk, attend(blk, q, k, v, bias)))), None
    logits = (q * blk.attn.scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    weights = blk.attn.attn_drop(logits.softmax(dim=-1))
    x = attn_residual(blk, x, attn_out(blk, (weights @ v).transpose(1, 2)))
    return mlp_residual(blk, x), logits


def embed_tokens(vit: VisionTransformer, x: Tensor) -> Tensor:
    """Images ``(B, C, H, W)`` → the first block's input ``(B, 1 + N, D)``, exactly as timm's
    ``forward_features`` makes it (patch embedding, class token and position embedding, patch
    dropout, pre-norm). timm has no public method for this step: its ``_pos_embed`` is called here
    and nowhere else in sacvit."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


def mlp_widths(blk: Block) -> tuple[int, int]:
    """``(input, hidden)`` widths of the block's MLP."""
    return blk.mlp.fc1.in_features, blk.mlp.fc1.out_features


def mlp_ratio(blk: Block) -> float:
    """Hidden width of the block's MLP as a multiple of its input width."""
    d, hidden = mlp_widths(blk)
    return hidden / d


def block_args(blk: Block) -> dict[str, Any]:
    """The ``VisionTransformer`` arguments that rebuild ``blk``'s structure (a same-shape twin
    loads its weights): heads, MLP ratio, qkv bias, ``qk_norm``, layer scale, ``scale_attn_norm``."""
    attn = blk.attn
    return dict(num_heads=attn.num_heads, mlp_ratio=mlp_ratio(blk), qkv_bias=attn.qkv.bias is not None,
                qk_norm=not isinstance(attn.q_norm, nn.Identity), scale_attn_norm=not isinstance(attn.norm, nn.Identity),
                init_values=None if isinstance(blk.ls1, nn.Identity) else 1e-5)


def head_dim(blk: Block) -> int:
    """Width of one attention head."""
    return blk.attn.head_dim
