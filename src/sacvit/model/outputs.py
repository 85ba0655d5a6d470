"""What the stages of :class:`~sacvit.model.sacvit.SACViT` return."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["EEOutput", "Prediction"]


@dataclass
class EEOutput:
    """What the early-exit stage hands to the SAC stage.

    Attributes:
        logits: ``(B, C)`` EE logits.
        tokens: ``(B, n, D)`` final EE patch tokens (before the last norm), input of the reuse MLP.
        embed: ``(B, n, D)`` EE input patch embeddings (patch embed + EE position embedding),
            reused as the non-target tokens.
        gca: ``(B, h, w)`` global class attention of each EE token, or ``None`` if not computed.
    """

    logits: Tensor
    tokens: Tensor
    embed: Tensor
    gca: Tensor | None

    def index(self, idx: Tensor) -> "EEOutput":
        """The outputs of the images ``idx`` only (batch compaction)."""
        return EEOutput(self.logits[idx], self.tokens[idx], self.embed[idx],
                        None if self.gca is None else self.gca[idx])


@dataclass
class Prediction:
    """Result of :meth:`SACViT.predict`.

    Attributes:
        logits: ``(B, C)`` logits of the stage each image ended in.
        stage: ``(B,)`` long, 0 = exited at EE, 1 = went through SAC.
        gmacs: ``(B,)`` GMACs spent on each image.
        box: ``(B, 4)`` target window in pixels ``(x0, y0, x1, y1)``; −1 for exited images.
        confidence: ``(B,)`` the EE exit score (top-1 softmax probability by default: ``SACConfig.exit_score``), the quantity compared with η.
    """

    logits: Tensor
    stage: Tensor
    gmacs: Tensor
    box: Tensor
    confidence: Tensor
