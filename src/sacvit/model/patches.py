"""Gathers of the SAC stage: selected image patches and selected token rows, as single copies.

Pure tensor functions. ``torch.gather`` with an expanded index is an elementwise kernel, an order
of magnitude slower here than one ``index_select`` of whole rows, so both gathers are written as
``index_select`` over flat views.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gather_patches", "gather_tokens"]


def gather_patches(x: Tensor, index: Tensor, patch: int, rows: Tensor | None = None) -> Tensor:
    """The full-resolution patches ``index`` of images ``rows``, flattened: ``(B', T, C·p·p)``.

    A crop without resizing: only the ``T`` selected patches are copied, never the images. For a
    contiguous batch each patch is ``C·p`` runs of ``p`` adjacent pixels, gathered as rows of an
    ``(·, p)`` view by one ``index_select`` (a memcpy per run).

    Args:
        x: ``(B, C, H, W)`` images; ``H`` and ``W`` multiples of ``patch``.
        index: ``(B', T)`` flat indices on the ``(H/p)×(W/p)`` patch grid.
        patch: patch side ``p`` in pixels.
        rows: ``(B',)`` which image of ``x`` each row of ``index`` belongs to (batch compaction
            without copying ``x``); ``None``: all images, in order.
    """
    B, C, H, W = x.shape
    p, gw = patch, W // patch
    if rows is None:
        rows = torch.arange(B, device=x.device)
    r, c = index // gw, index % gw  # (B', T) patch row and column
    if x.is_contiguous():
        # run (b, ch, pixel row y, patch column c) is row ((b·C + ch)·H + y)·gw + c of x.view(-1, p)
        img = rows.view(-1, 1, 1, 1) * C + torch.arange(C, device=x.device).view(1, 1, C, 1)
        y = (r * p)[..., None, None] + torch.arange(p, device=x.device).view(1, 1, 1, p)
        runs = (img * H + y) * gw + c[..., None, None]  # (B', T, C, p)
        patches = x.view(-1, p).index_select(0, runs.flatten())
    else:
        grid = x.view(B, C, H // p, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p) view
        patches = grid[rows[:, None], r, c]  # (B', T, C, p, p)
    return patches.reshape(*index.shape, C * p * p)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens[b, index[b]]`` for ``(B, n, D)`` tokens (or ``(1, n, D)``, shared by every row)
    and ``(B, k)`` indices, as one ``index_select`` of whole token rows: ``(B, k, D)``."""
    b, n, d = tokens.shape
    flat = index if b == 1 else index + torch.arange(b, device=index.device)[:, None] * n
    return tokens.reshape(b * n, d).index_select(0, flat.flatten()).view(*index.shape, d)
