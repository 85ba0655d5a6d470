"""EViT — token reorganisation (Liang et al., ICLR 2022, "Not All Patches Are What You Need").

At a few reduction blocks, after attention, the class token's attention to the other tokens
(averaged over heads) ranks them. The ``ceil(keep_rate · (N - 1))`` most attended tokens are
kept, in their original order; the inattentive rest are fused into a single extra token, their
average weighted by that attention. The MLP and every later block then run on the shorter
sequence. Used here training-free on an unmodified timm ViT (the paper also fine-tunes).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from sacvit import timm_ops as ops
from sacvit.flops import GIGA
from sacvit.peers.tome import attn_half_macs, check_vit, embed, head, mlp_macs, stem_and_head_macs

__all__ = ["EViTViT", "DEFAULT_LOCS", "default_locs"]

DEFAULT_LOCS = (3, 6, 9)  # DeiT setting: reduce in the 4th, 7th and 10th of 12 blocks


def default_locs(depth: int) -> tuple[int, ...]:
    """EViT's reduction blocks at the same relative depths as DeiT's ``(3, 6, 9)`` of 12."""
    return tuple(sorted({round(depth * i / 12) for i in DEFAULT_LOCS} & set(range(1, depth))))


def n_keep(keep_rate: float, n_tokens: int) -> int:
    """Patch tokens kept out of the ``n_tokens - 1`` non-CLS tokens (guarded against fp error)."""
    return math.ceil(round(keep_rate * (n_tokens - 1), 6))


class EViTViT(nn.Module):
    """EViT token reorganisation applied to a timm ``VisionTransformer`` (weights shared).

    A reduction block computes the full attention with SDPA as usual, plus only the class-token
    row of the attention matrix, ``softmax(q_cls · Kᵀ / √d)``. Earlier fused tokens count as
    ordinary tokens at later reduction blocks. When nothing would be dropped (``keep_rate=1``)
    the block runs unchanged and no fused token is added.

    :meth:`gmacs` is a closed form of the forward: patch embedding, each block's linears and
    attention on its incoming tokens with the MLP on the reduced set, **plus the reduction cost**
    — the class-token row (``N·D``) and the weighted fusion (``dropped·D``) — and the classifier.
    Norms, softmax and the sort/gather are not counted (fvcore style).

    Args:
        model: a timm ``VisionTransformer`` with a class token.
        keep_rate: fraction of the non-CLS tokens kept at each reduction block, in ``(0, 1]``.
        locs: indices of the reduction blocks; default ``(3, 6, 9)`` of 12 scaled to the depth
            (:func:`default_locs`: ``(1, 2, 3)`` for 4 blocks).

    Raises:
        ValueError: if the model is unsupported, ``keep_rate`` is outside ``(0, 1]`` or a
            location is not a block index.
    """

    def __init__(
        self, model: VisionTransformer, keep_rate: float = 0.7, locs: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.model = check_vit(model)
        depth = len(model.blocks)
        if isinstance(keep_rate, bool) or not isinstance(keep_rate, (int, float)) or not 0 < keep_rate <= 1:
            raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
        if locs is None:
            locs = default_locs(depth)
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth for i in locs):
            raise ValueError(f"locs must be block indices in [0, {depth}), got {tuple(locs)!r}")
        self.keep_rate = float(keep_rate)
        self.locs = tuple(sorted(set(locs)))
        self.n_tokens = model.patch_embed.num_patches + 1

    def _schedule(self, n_tokens: int) -> list[tuple[int, int]]:
        """``(tokens in, tokens after reduction)`` for every block."""
        sched = []
        for i in range(len(self.model.blocks)):
            n_out = n_tokens
            if i in self.locs:
                kept = n_keep(self.keep_rate, n_tokens)
                if kept < n_tokens - 1:
                    n_out = 1 + kept + 1  # CLS, kept tokens, fused token
            sched.append((n_tokens, n_out))
            n_tokens = n_out
        return sched

    def token_counts(self, n_tokens: int) -> list[int]:
        """Tokens entering each block for an input of ``n_tokens`` (CLS included)."""
        return [n for n, _ in self._schedule(n_tokens)]

    def gmacs(self) -> float:
        """GMACs per image at the model's input size (reduction cost included; see class doc)."""
        m = self.model
        total = stem_and_head_macs(m)
        for blk, (n, n_out) in zip(m.blocks, self._schedule(self.n_tokens)):
            total += attn_half_macs(n, m.embed_dim) + mlp_macs(n_out, blk)
            if n_out < n:
                dropped = n - n_out + 1
                total += n * m.embed_dim + dropped * m.embed_dim  # CLS row + fusion
        return total / GIGA

    def _reduce(self, blk: Block, x: torch.Tensor, kept: int) -> torch.Tensor:
        """A block that keeps CLS + ``kept`` attentive tokens + one fused token before its MLP."""
        x, q, k = ops.attention_half(blk, x)
        cls_attn = ops.cls_logits(blk, q, k).softmax(dim=-1)  # (B, H, N)
        cls_attn = cls_attn.mean(dim=1)[:, 1:]  # (B, N-1), heads averaged, CLS key dropped
        order = cls_attn.argsort(dim=-1, descending=True)
        keep_idx, drop_idx = order[:, :kept].sort(dim=-1).values, order[:, kept:]

        cls, patches = x[:, :1], x[:, 1:]
        pick = lambda idx: patches.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        weights = cls_attn.gather(1, drop_idx)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        fused = weights[:, None] @ pick(drop_idx)  # (B, 1, D) attention-weighted mean
        return ops.mlp_residual(blk, torch.cat([cls, pick(keep_idx), fused], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` → logits ``(B, num_classes)``."""
        m = self.model
        x = embed(m, x)
        for i, blk in enumerate(m.blocks):
            kept = n_keep(self.keep_rate, x.shape[1])
            x = self._reduce(blk, x, kept) if i in self.locs and kept < x.shape[1] - 1 else blk(x)
        return head(m, x)

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, locs={self.locs}"
