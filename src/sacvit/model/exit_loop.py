"""The host exit loop of SAC-ViT, shared by every way of running it.

:func:`exit_loop` is the part of ``predict`` between the two stages: the exit decision, the batch
compaction to the images that continue, the SAC stage on them (a callable), and the scatter of its
results back into one :class:`~sacvit.model.outputs.Prediction`. Eager
:meth:`SACViT.predict <sacvit.model.sacvit.SACViT.predict>` (with the adaptive mode's buckets inside
its callable) and :func:`~sacvit.model.stages.staged_predict` (eager stages, ``torch.compile`` d
stages, onnxruntime sessions) call it, so they decide, compact and scatter identically.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .outputs import Prediction

__all__ = ["exit_loop", "RunSAC"]

#: ``run_sac(rest) → (logits, gmacs, box)``: the SAC stage on the images ``rest`` ``(n,)`` of the
#: batch — ``(n, C)`` logits, GMACs per image (``(n,)`` or one number) and ``(n, 4)`` pixel boxes.
RunSAC = Callable[[Tensor], tuple[Tensor, Tensor | float, Tensor]]


def exit_loop(logits: Tensor, confidence: Tensor, threshold: float, gmacs_ee: float, run_sac: RunSAC,
              bad_input: Tensor | None = None) -> Prediction:
    """Exit decision, compaction, SAC on the rest, scatter back: one host synchronisation.

    Args:
        logits: ``(B, C)`` EE logits.
        confidence: ``(B,)`` EE top-1 softmax probability; images with ``confidence ≥ threshold``
            exit after EE.
        threshold: η (0: every image exits; above 1: none does).
        gmacs_ee: GMACs of the EE stage for one image.
        run_sac: the SAC stage on the images that continue (:data:`RunSAC`), called at most once.
        bad_input: optional 0-dim bool tensor "the input holds NaN/inf", read at the same sync as
            the exit decision (folded into one ``nonzero``) instead of a sync of its own.

    Raises:
        ValueError: ``bad_input`` is true.
    """
    B = logits.shape[0]
    device = logits.device
    out = logits.clone()
    stage = torch.zeros(B, dtype=torch.long, device=device)
    gmacs = torch.full((B,), gmacs_ee, device=device)
    box = torch.full((B, 4), -1, dtype=torch.long, device=device)
    go_on = confidence < threshold
    if bad_input is not None:  # a bad input adds B + 1 entries, so one nonzero answers both questions
        go_on = torch.cat([go_on, bad_input.expand(B + 1)])
    rest = go_on.nonzero().squeeze(1)  # the one host sync: batch compaction
    if rest.numel() > B:
        raise ValueError("input contains NaN or infinite values")
    if rest.numel():
        sac_logits, sac_gmacs, sac_box = run_sac(rest)
        out[rest] = sac_logits.to(out.dtype)
        stage.index_fill_(0, rest, 1)
        gmacs[rest] += sac_gmacs
        box[rest] = sac_box
    return Prediction(logits=out, stage=stage, gmacs=gmacs, box=box, confidence=confidence)
