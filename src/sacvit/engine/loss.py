"""The SAC-ViT training loss (DESIGN.md, Training) and DVT's cascade loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["sac_loss", "cascade_loss", "cross_entropy"]


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for class indices ``(B,)`` or soft targets ``(B, C)`` (mixup / cutmix)."""
    if target.dim() == 2:
        return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
    return F.cross_entropy(logits, target)


def sac_loss(logits_ee: Tensor, logits_sac: Tensor, target: Tensor, *, kl_weight: float = 1.0,
             kl_tau: float = 1.0) -> Tensor:
    """``CE(logits_sac, y) + λ·τ²·KL(softmax(sac/τ).detach() ‖ softmax(ee/τ))``.

    The SAC output, detached, supervises the EE output (CF-ViT's scheme). ``target`` is either
    class indices ``(B,)`` or soft targets ``(B, C)`` (mixup / cutmix / label smoothing);
    ``kl_weight`` is λ and ``kl_tau`` is τ (``TrainConfig.kl_weight`` / ``kl_tau``).
    """
    ce = cross_entropy(logits_sac, target)
    if kl_weight == 0:
        return ce
    tau = kl_tau
    teacher = (logits_sac.detach() / tau).log_softmax(dim=-1)
    student = (logits_ee / tau).log_softmax(dim=-1)
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return ce + kl_weight * tau * tau * kl


def cascade_loss(logits: tuple[Tensor, ...] | list[Tensor], target: Tensor) -> Tensor:
    """``Σ_i CE(logits_i, y)``: every exit of a cascade (DVT's training forward) trained with
    cross-entropy on the labels, equally weighted (no distillation between exits).

    ``target`` is class indices ``(B,)`` or soft targets ``(B, C)``, as for :func:`cross_entropy`.
    """
    if len(logits) == 0:
        raise ValueError("cascade_loss needs the logits of at least one stage")
    return sum((cross_entropy(z, target) for z in logits[1:]), cross_entropy(logits[0], target))
