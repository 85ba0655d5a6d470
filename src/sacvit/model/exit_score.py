"""The exit score: what η is compared with after the EE stage (``SACConfig.exit_score``).

* ``"max_prob"`` — the top-1 softmax probability (the paper's, the default);
* ``"temperature"`` — the top-1 probability of ``softmax(logits / T)`` with
  ``T = SACConfig.exit_temperature`` (temperature scaling: an under-confident EE stage, T < 1);
* ``"margin"`` — top-1 minus top-2 probability.

Every score is in [0, 1] and rises with confidence, so η keeps its meaning ("exit when the score
reaches η"; η > 1: never). It is one function used by eager ``predict``, the EE stage graph (so the
ONNX export computes it in-graph and the runtime compares it on the host) and the records that
calibrate η; the checkpoint carries it in its SAC configuration.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EXIT_SCORES", "exit_score"]

EXIT_SCORES = ("max_prob", "temperature", "margin")


def exit_score(logits: Tensor, score: str = "max_prob", temperature: float = 1.0) -> Tensor:
    """``(B,)`` float32 exit score of ``(B, C)`` logits."""
    z = logits.float()
    if score == "max_prob":
        return z.softmax(dim=-1).amax(dim=-1)
    if score == "temperature":
        return (z / temperature).softmax(dim=-1).amax(dim=-1)
    if score == "margin":
        top = z.softmax(dim=-1).topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    raise ValueError(f"exit_score must be one of {EXIT_SCORES}, got {score!r}")
