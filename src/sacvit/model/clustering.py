"""Semantic-aware clustering geometry: pure, batched tensor functions.

The chain is ``GCA map → window (row, col, m) → pixel box → token indices``. Coordinates:

* the EE grid is ``h×w`` tokens; EE token ``(r, c)`` has flat index ``r·w + c``;
* the full grid is ``(s·h)×(s·w)`` tokens for an EE downsampling factor ``s``; EE token
  ``(r, c)`` is the parent of the ``s×s`` full tokens ``(s·r + i, s·c + j)``;
* one EE token covers ``s·p`` pixels of the full-resolution image for a patch size ``p``.

Nothing here iterates: one pooling + argmax picks the window, one sort splits the clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Clusters",
    "best_window",
    "center_window",
    "random_window",
    "adaptive_window_size",
    "window_mask",
    "top_k_in_mask",
    "upsample_mask",
    "split_by_mask",
    "parent_index",
    "window_to_box",
    "box_to_window",
    "token_to_pixel",
    "pixel_to_token",
    "target_count",
    "make_clusters",
]


@dataclass
class Clusters:
    """Token indices of one dense bucket of images (every image has the same counts).

    Attributes:
        target: ``(B, T)`` full-grid indices of the target tokens, in raster order.
        parent: ``(B, T)`` EE-grid index of each target token's parent EE token.
        non_target: ``(B, M)`` EE-grid indices of the non-target tokens, in raster order.
        box: ``(B, 4)`` the target window in full-resolution pixels, ``(x0, y0, x1, y1)``.
    """

    target: Tensor
    parent: Tensor
    non_target: Tensor
    box: Tensor

    @property
    def num_target(self) -> int:
        return self.target.shape[1]

    @property
    def num_non_target(self) -> int:
        return self.non_target.shape[1]


def best_window(gca: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Top-left ``(row, col)`` of the ``m×m`` window with the largest GCA mass.

    Args:
        gca: ``(B, h, w)`` semantic score of each EE token.
        m: window side in EE tokens, ``1 ≤ m ≤ min(h, w)``.

    Returns:
        ``row`` and ``col``, each ``(B,)`` long.
    """
    _, h, w = gca.shape
    if not 1 <= m <= min(h, w):
        raise ValueError(f"window side {m} does not fit the {h}×{w} EE grid")
    pooled = F.avg_pool2d(gca.unsqueeze(1), m, stride=1).flatten(1)  # (B, (h-m+1)·(w-m+1))
    flat = pooled.argmax(dim=1)
    return flat // (w - m + 1), flat % (w - m + 1)


def center_window(batch: int, m: int, grid: tuple[int, int], device: torch.device | str = "cpu"
                  ) -> tuple[Tensor, Tensor]:
    """Top-left ``(row, col)`` of the centred ``m×m`` window (the ablation of the GCA window)."""
    h, w = grid
    if not 1 <= m <= min(h, w):
        raise ValueError(f"window side {m} does not fit the {h}×{w} EE grid")
    return (torch.full((batch,), (h - m) // 2, dtype=torch.long, device=device),
            torch.full((batch,), (w - m) // 2, dtype=torch.long, device=device))


def random_window(batch: int, m: int, grid: tuple[int, int], device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Top-left ``(row, col)`` of a uniformly random ``m×m`` window per image (an ablation)."""
    h, w = grid
    if not 1 <= m <= min(h, w):
        raise ValueError(f"window side {m} does not fit the {h}×{w} EE grid")
    return (torch.randint(0, h - m + 1, (batch,), device=device, generator=generator),
            torch.randint(0, w - m + 1, (batch,), device=device, generator=generator))


def adaptive_window_size(gca: Tensor, sizes: tuple[int, ...], rho: float) -> Tensor:
    """Per image, the smallest side in ``sizes`` whose best window holds ``rho`` of the mass.

    Images for which no candidate reaches ``rho`` get the largest candidate.
    """
    _, h, w = gca.shape
    sizes = tuple(sorted(s for s in sizes if s <= min(h, w)))
    if not sizes:
        raise ValueError(f"no adaptive window size fits the {h}×{w} EE grid")
    total = gca.flatten(1).sum(1).clamp_min(torch.finfo(gca.dtype).tiny)
    chosen = torch.full_like(total, sizes[-1], dtype=torch.long)
    for m in reversed(sizes):  # smaller sides overwrite larger ones where they suffice
        mass = F.avg_pool2d(gca.unsqueeze(1), m, stride=1).flatten(1).amax(1) * (m * m)
        chosen = torch.where(mass >= rho * total, torch.full_like(chosen, m), chosen)
    return chosen


def window_mask(row: Tensor, col: Tensor, m: int, grid: tuple[int, int]) -> Tensor:
    """``(B, h·w)`` boolean mask of the EE tokens inside each ``m×m`` window."""
    h, w = grid
    rows = torch.arange(h, device=row.device)
    cols = torch.arange(w, device=row.device)
    in_rows = (rows >= row[:, None]) & (rows < row[:, None] + m)  # (B, h)
    in_cols = (cols >= col[:, None]) & (cols < col[:, None] + m)  # (B, w)
    return (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1)


def top_k_in_mask(score: Tensor, mask: Tensor, k: int) -> Tensor:
    """Keep only the ``k`` highest-scoring tokens of ``mask`` (``mask`` must hold ≥ ``k`` per row)."""
    masked = score.masked_fill(~mask, float("-inf"))
    keep = masked.topk(k, dim=1).indices
    return torch.zeros_like(mask).scatter_(1, keep, True)


def upsample_mask(mask: Tensor, grid: tuple[int, int], scale: int) -> Tensor:
    """Map an EE-grid mask ``(B, h·w)`` to the full grid ``(B, s·h·s·w)`` (each parent → s×s)."""
    h, w = grid
    m = mask.view(-1, h, 1, w, 1).expand(-1, h, scale, w, scale)
    return m.reshape(mask.shape[0], h * scale * w * scale)


def split_by_mask(mask: Tensor, n_true: int) -> tuple[Tensor, Tensor]:
    """Indices of the true and the false entries of each row, both in ascending order.

    Every row must hold exactly ``n_true`` true entries (one sort, no host sync). The sort keys
    are distinct (false entries are offset by the row length), so no stable sort is needed, which
    keeps the function exportable to ONNX (``TopK`` has no stable mode).
    """
    n = mask.shape[1]
    key = (~mask).to(torch.long) * n + torch.arange(n, device=mask.device)
    order = torch.argsort(key, dim=1)
    return order[:, :n_true], order[:, n_true:]


def parent_index(fine: Tensor, grid: tuple[int, int], scale: int) -> Tensor:
    """EE-grid index of the parent of each full-grid token index in ``fine``."""
    _, w = grid
    fine_w = w * scale
    return (fine // fine_w // scale) * w + (fine % fine_w) // scale


def window_to_box(row: Tensor, col: Tensor, m: Tensor | int, token_px: int) -> Tensor:
    """``(B, 4)`` pixel box ``(x0, y0, x1, y1)`` of a window; ``token_px`` = pixels per EE token.

    ``m`` is an int (no tensor is built from it, so nothing is copied to the device) or ``(B,)``.
    """
    return torch.stack([col, row, col + m, row + m], dim=1) * token_px


def box_to_window(box: Tensor, token_px: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`window_to_box`: ``(row, col, m)`` of a square box on the EE grid."""
    if bool(((box % token_px) != 0).any()):
        raise ValueError(f"box {box.tolist()} is not aligned to the {token_px}-px EE token grid")
    cells = box // token_px
    side_x, side_y = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    if not torch.equal(side_x, side_y):
        raise ValueError("box is not square on the EE token grid")
    return cells[:, 1], cells[:, 0], side_x


def token_to_pixel(index: Tensor, grid_w: int, patch: int) -> Tensor:
    """Pixel box ``(..., 4)`` = ``(x0, y0, x1, y1)`` of flat token indices on a ``grid_w``-wide grid."""
    y0, x0 = (index // grid_w) * patch, (index % grid_w) * patch
    return torch.stack([x0, y0, x0 + patch, y0 + patch], dim=-1)


def pixel_to_token(x: Tensor, y: Tensor, grid_w: int, patch: int) -> Tensor:
    """Flat index of the token that contains pixel ``(x, y)``."""
    return (y // patch) * grid_w + x // patch


def target_count(alpha: float, m: int) -> int:
    """``⌈α·m²⌉``: how many of an ``m×m`` window's EE tokens are target (guarded against fp error)."""
    return math.ceil(alpha * m * m - 1e-9)


def make_clusters(
    gca: Tensor,
    row: Tensor,
    col: Tensor,
    m: int,
    scale: int,
    token_px: int,
    alpha: float = 1.0,
    k: int | None = None,
) -> Clusters:
    """Split the EE tokens of a dense bucket into the target and non-target clusters.

    Args:
        gca: ``(B, h, w)`` semantic score of each EE token.
        row, col: ``(B,)`` window corners from :func:`best_window`.
        m: window side shared by the bucket.
        scale: EE downsampling factor ``s``.
        token_px: pixels covered by one EE token (``s·p``).
        alpha: fraction of the window's tokens (top by GCA) that are target.
        k: the number of target EE tokens itself (default :func:`target_count` of ``alpha``).

    Returns:
        The :class:`Clusters` of the bucket: ``T = s²·k`` target, ``M = h·w − k`` non-target
        tokens for every image.
    """
    _, h, w = gca.shape
    mask = window_mask(row, col, m, (h, w))
    k = target_count(alpha, m) if k is None else k
    if k < m * m:
        mask = top_k_in_mask(gca.flatten(1), mask, k)
    fine = upsample_mask(mask, (h, w), scale)
    target, _ = split_by_mask(fine, k * scale * scale)
    _, non_target = split_by_mask(mask, k)
    return Clusters(
        target=target,
        parent=parent_index(target, (h, w), scale),
        non_target=non_target,
        box=window_to_box(row, col, m, token_px),
    )
