"""SAC-ViT's predecessors as compositions of its parts: CF-ViT and LF-ViT.

Both share SAC-ViT's skeleton (one shared-weight timm ViT; a coarse stage on the downsampled
image whose global class attention chooses where to look; the chosen EE tokens re-embedded as
``s×s`` fine tokens from the full-resolution image; the other tokens reused from the coarse
stage; the feature-reuse MLP on the fine tokens). They differ from SAC-ViT only in the
:class:`~sacvit.config.SACConfig` fields below, so a predecessor is a default configuration of
:class:`~sacvit.model.sacvit.SACViT`, not a copy of it: predict, the staged / compiled / ONNX
graphs, visualize, training, calibration and the bench all run them unchanged.

* **CF-ViT** (Chen et al., AAAI 2023): the informative coarse tokens are the top ``α = 0.5`` of the
  whole 7×7 grid by global class attention (25 of 49, anywhere on the grid: a whole-grid window
  with ``alpha_whole_grid``), each split into 2×2 fine tokens; the uninformative 24 stay coarse;
  one full self-attention over the mixed sequence.
* **LF-ViT** (Hu et al., AAAI 2024): the ``m×m`` window (m = 5) with the largest class-attention mass
  (its neighbourhood-aware localisation), the top ``⌈0.88·m²⌉`` = 22 of its tokens re-embedded
  (88 fine tokens); full self-attention.
* **SAC-ViT** keeps LF-ViT's window (every token of it, α = 1) but attends *within* each cluster.

As in both predecessors' code, the reuse term is added to the fine tokens only; their
non-selected tokens are the coarse stage's input embeddings (``reuse_non_target=False``, while
SAC-ViT's default also adds it to its non-target tokens). A user's ``sac=`` fields override these
defaults one by one (e.g. ``sac={"alpha": 0.6}`` keeps the rest of CF-ViT's selection).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .sacvit import SACViT

__all__ = ["CFViT", "LFViT", "FAMILY"]


class CFViT(SACViT):
    """CF-ViT: coarse-to-fine, the top half of the coarse tokens by GCA re-embedded, full attention."""

    METHOD: ClassVar[str] = "cfvit"
    DEFAULT_SAC: ClassVar[dict[str, Any]] = dict(window=7, alpha=0.5, alpha_whole_grid=True, attention="full",
                                                 reuse_non_target=False)


class LFViT(SACViT):
    """LF-ViT: localise then focus, the top 88% of the best 5×5 window re-embedded, full attention."""

    METHOD: ClassVar[str] = "lfvit"
    DEFAULT_SAC: ClassVar[dict[str, Any]] = dict(window=5, alpha=0.88, attention="full", reuse_non_target=False)


#: The SACViT-based family by method name (DVT is a cascade of its own: :mod:`.dvt`).
FAMILY: dict[str, type[SACViT]] = {"sacvit": SACViT, "cfvit": CFViT, "lfvit": LFViT}
