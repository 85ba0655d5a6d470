"""The EE position embedding: the full-grid position embedding resampled to the EE grid."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

__all__ = ["ResampledPosEmbed"]


class ResampledPosEmbed:
    """``pos_embed`` (class token first) resampled to another grid, cached for inference.

    The resampling is recomputed in training, under autograd and during graph capture
    (``torch.compile`` / ``torch.export`` trace it); otherwise it is cached, keyed on the tensor
    (identity, storage, in-place version, dtype, device) and the grids, so ``load_state_dict``,
    optimizer steps and ``.to()`` invalidate the cache by themselves.
    """

    def __init__(self) -> None:
        self._entry: tuple[Tensor, Any, Tensor] | None = None

    def clear(self) -> None:
        self._entry = None

    def __call__(self, pos: Tensor, grid: tuple[int, int], old_grid: tuple[int, int], training: bool) -> Tensor:
        def resample() -> Tensor:
            return resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(old_grid), num_prefix_tokens=1)

        if training or (torch.is_grad_enabled() and pos.requires_grad) or torch.compiler.is_compiling():
            return resample()
        try:
            key = (pos.data_ptr(), pos._version, pos.dtype, pos.device, tuple(grid), tuple(old_grid))
        except RuntimeError:  # an inference tensor has no version counter: do not cache
            return resample()
        entry = self._entry
        # holding ``pos`` keeps its storage alive, so a data pointer is never reused for another
        if entry is None or entry[0] is not pos or entry[1] != key:
            with torch.no_grad():
                entry = (pos, key, resample())
            self._entry = entry
        return entry[2]
