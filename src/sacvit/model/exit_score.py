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

__all__ = ["EXIT_SCORES", "exit_score", "fit_temperature", "calibration_error"]

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


def fit_temperature(logits: Tensor, labels: Tensor, grid: Tensor | None = None) -> float:
    """The temperature T minimising the negative log-likelihood of ``softmax(logits / T)`` on
    labelled held-out logits (a grid search over ``[0.05, 20]``, log-spaced; temperature scaling,
    Guo et al. 2017). Fit it on held-out images, never on the images it is reported on."""
    z, y = logits.float(), labels.long()
    grid = torch.logspace(-1.3, 1.3, 105) if grid is None else grid
    nll = torch.stack([torch.nn.functional.cross_entropy(z / t, y) for t in grid])
    return float(grid[int(nll.argmin())])


def calibration_error(score: Tensor, correct: Tensor, bins: int = 15) -> float:
    """Expected calibration error (equal-width bins) of a confidence against correctness."""
    s, c = score.float(), correct.float()
    edges = torch.linspace(0, 1, bins + 1)
    idx = torch.bucketize(s.clamp(0, 1), edges[1:-1])
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += float(m.float().mean()) * abs(float(s[m].mean()) - float(c[m].mean()))
    return err
