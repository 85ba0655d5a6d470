"""ToMe — Token Merging (Bolya et al., ICLR 2023) on an unmodified timm ViT.

In every block, after attention, ``r`` tokens are merged away by *bipartite soft matching*:
tokens are split alternately into sets A and B, each A token finds its most similar B token
(cosine similarity of the attention keys, averaged over heads), and the ``r`` A tokens with the
most similar matches are folded into their match by a size-weighted average. Each token carries
a size (how many patches it stands for); attention is *proportional* — ``log(size)`` of every
key is added to the attention logits — so a merged token counts as many times as it has patches.
The class token is never merged. The method is training-free: it reuses the ViT's weights as is.

This module also holds the small helpers shared with :mod:`sacvit.peers.evit`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from sacvit import timm_ops as ops
from sacvit.flops import GIGA, block_macs, patch_embed_macs

__all__ = ["ToMeViT", "bipartite_merge"]


# --------------------------------------------------------------------------- shared helpers
def check_vit(model: nn.Module) -> VisionTransformer:
    """Check that ``model`` is a plain timm ViT that the peers can run, and return it.

    Raises:
        ValueError: if it is not a timm ``VisionTransformer`` with a class token read out by
            ``global_pool='token'``, no register tokens, and standard ``Block``/``Attention``.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"expected a timm.models.vision_transformer.VisionTransformer, got {type(model).__name__}"
        )
    if model.cls_token is None or model.num_prefix_tokens != 1 or model.global_pool != "token":
        raise ValueError(
            "the ViT must have a class token, no register tokens and global_pool='token' "
            f"(got class_token={model.cls_token is not None}, "
            f"num_prefix_tokens={model.num_prefix_tokens}, global_pool={model.global_pool!r})"
        )
    ops.check_blocks(model.blocks)
    return model


def embed(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Image batch ``(B, C, H, W)`` → tokens ``(B, 1 + HW/p², D)``, exactly as timm does it."""
    return ops.embed_tokens(model, x)


def head(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Final norm and classifier on the class token of ``x`` ``(B, N, D)`` → logits."""
    return model.forward_head(model.norm(x[:, :1]))


def mlp_macs(n_tokens: int, blk: Block) -> int:
    """MACs of a block's MLP (``fc1`` and ``fc2``) over ``n_tokens`` tokens."""
    d, hidden = ops.mlp_widths(blk)
    return n_tokens * 2 * d * hidden


def attn_half_macs(n_tokens: int, dim: int) -> int:
    """MACs of a block without its MLP: ``qkv``, ``proj`` and attention over ``n_tokens``."""
    return block_macs(n_tokens, dim, mlp_ratio=0.0)


def stem_and_head_macs(model: VisionTransformer) -> int:
    """MACs of the patch embedding and of the linear classifier (0 when there is none)."""
    pe = model.patch_embed
    ph, pw = pe.patch_size
    n_patches = pe.grid_size[0] * pe.grid_size[1]
    stem = patch_embed_macs(n_patches, ph, model.embed_dim, pe.proj.in_channels) * pw // ph  # ph×pw kernel
    fc = model.head
    return stem + (fc.in_features * fc.out_features if isinstance(fc, nn.Linear) else 0)


# --------------------------------------------------------------------------- ToMe
def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of every image by bipartite soft matching; token 0 (CLS) is kept.

    Args:
        x: tokens ``(B, N, D)``.
        size: patches per token ``(B, N, 1)``.
        metric: similarity features ``(B, N, d)`` (keys averaged over heads).
        r: how many tokens to remove, at most ``(N - 1) // 2``.

    Returns:
        ``(x, size)`` with ``N - r`` tokens: the unmerged A tokens in their original order
        (CLS first), then the B tokens, merged ones holding the size-weighted mean.
    """
    with torch.no_grad():  # the matching only picks indices
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, Na, Nb) cosine
        scores[:, 0] = -math.inf  # CLS (A[0]) is never merged
        best, match = scores.max(dim=-1)  # each A token's most similar B token
        order = best.argsort(dim=-1, descending=True)
        src, keep = order[:, :r], order[:, r:].sort(dim=-1).values
        dst = match.gather(1, src)

    xs = torch.cat([x * size, size], dim=-1)  # merge sums, then divide by the total size
    a, b = xs[:, ::2], xs[:, 1::2]
    width = xs.shape[-1]
    pick = lambda t, idx: t.gather(1, idx[..., None].expand(-1, -1, width))  # noqa: E731
    b = b.scatter_add(1, dst[..., None].expand(-1, -1, width), pick(a, src))
    out = torch.cat([pick(a, keep), b], dim=1)
    size = out[..., -1:]
    return out[..., :-1] / size, size


class ToMeViT(nn.Module):
    """Token Merging applied to a timm ``VisionTransformer`` (weights shared, not copied).

    Per block: attention with proportional attention, then ``r`` merges, then the MLP. So the
    attention and ``qkv``/``proj`` of block ``i`` see ``token_counts(N)[i]`` tokens and its MLP
    sees ``r`` fewer.

    :meth:`gmacs` is a closed form of what the forward computes: patch embedding, per block the
    ``qkv``/``proj`` linears and attention on the incoming tokens, the MLP on the merged tokens,
    **plus the merging cost** — the ``|A|·|B|·head_dim`` similarity product — and the classifier.
    Norms, softmax, sorting and the gather/scatter of merging are not counted (fvcore style).

    Args:
        model: a timm ``VisionTransformer`` with a class token (see :func:`check_vit`).
        r: tokens merged in every block (clamped late in the network, see :meth:`merges`), or
            one exact value per block.

    Raises:
        ValueError: if the model is unsupported, ``r`` is negative or has the wrong length, or
            ``r`` exceeds what the token count allows (``(N - 1) // 2``, see :meth:`merges`).
    """

    def __init__(self, model: VisionTransformer, r: int | Sequence[int] = 8) -> None:
        super().__init__()
        self.model = check_vit(model)
        depth = len(model.blocks)
        rs = [r] if isinstance(r, int) else list(r)
        if not isinstance(r, int) and len(rs) != depth:
            raise ValueError(f"r has {len(rs)} entries but the model has {depth} blocks")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in rs):
            raise ValueError(f"r must be a non-negative integer or a list of them, got {r!r}")
        self.r = r if isinstance(r, int) else rs
        self.n_tokens = model.patch_embed.num_patches + 1
        self.merges(self.n_tokens)  # validates r against the model's own token count

    def merges(self, n_tokens: int) -> list[int]:
        """Tokens merged in each block for an input of ``n_tokens`` (CLS included).

        An int ``r`` is clamped, as in the reference implementation, to the ``(N - 1) // 2``
        tokens a block can merge once the sequence has become short; a per-block list is exact.

        Raises:
            ValueError: if an int ``r`` exceeds ``(N - 1) // 2`` in the first block, or a list
                entry exceeds it in its block.
        """
        out = []
        for i in range(len(self.model.blocks)):
            cap = (n_tokens - 1) // 2
            r = self.r[i] if isinstance(self.r, list) else self.r
            if r > cap and (isinstance(self.r, list) or i == 0):
                raise ValueError(f"r={r} is too large for block {i}: with {n_tokens} tokens at "
                                 f"most {cap} can be merged")
            out.append(min(r, cap))
            n_tokens -= out[-1]
        return out

    def token_counts(self, n_tokens: int) -> list[int]:
        """Tokens entering each block for an input of ``n_tokens`` (CLS included)."""
        counts = []
        for r in self.merges(n_tokens):
            counts.append(n_tokens)
            n_tokens -= r
        return counts

    def gmacs(self) -> float:
        """GMACs per image at the model's input size (merging cost included; see class doc)."""
        m = self.model
        total = stem_and_head_macs(m)
        counts, merges = self.token_counts(self.n_tokens), self.merges(self.n_tokens)
        for blk, n, r in zip(m.blocks, counts, merges):
            total += attn_half_macs(n, m.embed_dim) + mlp_macs(n - r, blk)
            if r:
                total += ((n + 1) // 2) * (n // 2) * ops.head_dim(blk)  # A·Bᵀ similarity
        return total / GIGA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` → logits ``(B, num_classes)``."""
        m = self.model
        x = embed(m, x)
        size = None  # patches per token; None while every token is one patch
        for blk, r in zip(m.blocks, self.merges(x.shape[1])):
            bias = None if size is None else size.log().transpose(1, 2)[:, None]  # (B,1,1,N)
            x, _, k = ops.attention_half(blk, x, bias)
            if r:
                ones = torch.ones_like(x[..., :1]) if size is None else size
                x, size = bipartite_merge(x, ones, k.mean(dim=1), r)
            x = ops.mlp_residual(blk, x)
        return head(m, x)

    def extra_repr(self) -> str:
        return f"r={self.r}"
