"""The two stages of SAC-ViT as graph-capturable modules, and the host loop that joins them.

:meth:`SACViT.predict <sacvit.model.sacvit.SACViT.predict>` is one Python function with the exit
decision in the middle. A compiler (``torch.compile(fullgraph=True)``) or an exporter (ONNX) needs
the two sides of that decision as two static graphs, with the decision on the host:

* :class:`EEStage` — ``image → (logits, confidence, gca, window, tokens, embed)``: the EE stage,
  its exit confidence, the global class attention and the chosen window ``(row, col)`` on the EE
  grid, plus the two EE tensors the SAC stage reuses;
* :class:`SACStage` — ``(image, tokens, embed, gca, window) → logits``: the SAC stage of the images
  that did not exit, for the window mode (every image has the same token counts);
* :func:`staged_predict` — the host side: exit decision, batch compaction, SAC on the rest,
  scatter back; returns the same :class:`~sacvit.model.outputs.Prediction` as ``SACViT.predict``.
  It takes the stages as plain functions, so eager stages, compiled stages
  (:class:`CompiledSACViT`) and onnxruntime sessions (:mod:`sacvit.runtime`) share it.

Both stages call the model's own methods (``forward_ee``, ``forward_sac``) and its
:class:`~sacvit.model.policy.ClusterPolicy` (window choice, target-token rule, token counts), and
:func:`staged_predict` is :func:`~sacvit.model.exit_loop.exit_loop`, the host loop of
``predict``, so they compute exactly what ``predict`` computes. The adaptive clustering mode (one
window side per image, data-dependent bucket sizes) and a random window policy have no static
graph and are refused with a clear message (:meth:`ClusterPolicy.check_static`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .clustering import window_to_box
from .exit_loop import exit_loop
from .inputs import check_batch, nonfinite
from .outputs import EEOutput, Prediction

__all__ = ["EEStage", "SACStage", "StageGeometry", "CompiledSACViT", "check_stageable", "geometry",
           "staged_predict"]


def check_stageable(model: nn.Module) -> None:
    """``ValueError`` unless ``model``'s two stages have static graphs (window mode, a deterministic policy)."""
    model.policy.check_static()
    if model.num_classes == 0:
        raise ValueError("the model has no classifier (num_classes=0): the exit rule reads the EE class "
                         "probabilities")
    model._check_two_stage()


@dataclass(frozen=True)
class StageGeometry:
    """What the host needs besides the two graphs: shapes, window, per-stage GMACs.

    Attributes:
        img_size: ``(H, W)`` full-resolution input in pixels.
        in_chans: input channels.
        ee_grid: ``(h, w)`` EE tokens.
        window: window side ``m`` in EE tokens.
        token_px: pixels of the full image covered by one EE token.
        num_target, num_non_target: SAC token counts ``T`` and ``M``.
        gmacs_ee, gmacs_sac: closed-form GMACs of each stage for one image.
    """

    img_size: tuple[int, int]
    in_chans: int
    ee_grid: tuple[int, int]
    window: int
    token_px: int
    num_target: int
    num_non_target: int
    gmacs_ee: float
    gmacs_sac: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "StageGeometry":
        d = dict(d)
        for k in ("img_size", "ee_grid"):
            d[k] = tuple(d[k])
        return cls(**d)


def geometry(model: nn.Module) -> StageGeometry:
    """The :class:`StageGeometry` of a window-mode SAC-ViT (the token counts of its policy)."""
    policy = model.policy
    t, n = policy.counts()
    return StageGeometry(img_size=tuple(model.patch_embed.img_size), in_chans=model.patch_embed.proj.in_channels,
                         ee_grid=policy.grid, window=policy.window, token_px=policy.token_px, num_target=t,
                         num_non_target=n, gmacs_ee=model.gmacs_ee(), gmacs_sac=model.gmacs_sac(t, n))


class _Stage(nn.Module):
    """A stage graph of ``model`` (shared weights, nothing copied) and its policy as it was when the
    stage was made; in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_stageable(model)
        self.model = model
        self.policy = model.policy
        self.train(False)


class EEStage(_Stage):
    """The EE stage of a window-mode SAC-ViT as one graph.

    ``forward(image)`` returns ``(logits, confidence, gca, window, tokens, embed)``: ``(B, C)``
    logits, ``(B,)`` exit score (what η is compared with: ``exit_score``), ``(B, h, w)`` GCA,
    ``(B, 2)`` long window corner ``(row, col)``, and ``(B, n, D)`` final EE tokens and input
    embeddings.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        ee = self.model.forward_ee(x)
        row, col = self.policy.corners(ee.gca, self.policy.window)
        confidence = self.model.exit_confidence(ee.logits)
        return ee.logits, confidence, ee.gca, torch.stack([row, col], dim=1), ee.tokens, ee.embed


class SACStage(_Stage):
    """The SAC stage of a window-mode SAC-ViT as one graph.

    ``forward(image, tokens, embed, gca, window)`` returns the ``(B, C)`` SAC logits of the images
    (the inputs are :class:`EEStage`'s outputs of the same images).
    """

    def forward(self, x: Tensor, tokens: Tensor, embed: Tensor, gca: Tensor, window: Tensor) -> Tensor:
        clusters = self.policy.clusters(gca, window[:, 0], window[:, 1], self.policy.window)
        ee = EEOutput(logits=tokens.new_empty(0), tokens=tokens, embed=embed, gca=gca)
        return self.model.forward_sac(x, ee, clusters)


EEFn = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]
SACFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def staged_predict(ee_fn: EEFn, sac_fn: SACFn, x: Tensor, threshold: float, geo: StageGeometry) -> Prediction:
    """``SACViT.predict`` from two stage functions: the exit decision and batch compaction on the host.

    Args:
        ee_fn: :class:`EEStage`'s contract.
        sac_fn: :class:`SACStage`'s contract.
        x: ``(B, C, H, W)`` images.
        threshold: exit threshold η (0: all exit; > 1: all go through SAC).
        geo: the model's :class:`StageGeometry`.

    Raises:
        ValueError: a bad batch (shape, NaN or infinite values; the latter found at the exit decision).
    """
    check_batch(x, geo.in_chans, geo.img_size, geo.token_px)
    bad = nonfinite(x) if x.is_floating_point() else None
    B = x.shape[0]
    logits, confidence, gca, window, tokens, embed = ee_fn(x)

    def run_sac(rest: Tensor) -> tuple[Tensor, float, Tensor]:
        pick = (lambda t: t) if rest.numel() == B else (lambda t: t.index_select(0, rest))
        win = pick(window)
        box = window_to_box(win[:, 0], win[:, 1], geo.window, geo.token_px)
        return sac_fn(pick(x), pick(tokens), pick(embed), pick(gca), win), geo.gmacs_sac, box

    return exit_loop(logits, confidence.to(x.device), threshold, geo.gmacs_ee, run_sac, bad)


class CompiledSACViT:
    """A SAC-ViT whose EE and SAC stages are ``torch.compile`` d with ``fullgraph=True``.

    The exit decision stays on the host (:func:`staged_predict`), so each stage is one graph; the
    compacted batch size varies, and ``torch.compile`` recompiles once with a dynamic batch axis.
    The compiled stages read the model's parameters, so later weight updates are seen.

    Args:
        model: a window-mode SAC-ViT (put in eval mode).
        **compile_kwargs: more ``torch.compile`` arguments (``mode``, ``dynamic``, ``backend`` …).
    """

    def __init__(self, model: nn.Module, **compile_kwargs) -> None:
        self.model = model.eval()
        self.geometry = geometry(model)
        kwargs = {"fullgraph": True, **compile_kwargs}
        self.ee = torch.compile(EEStage(model), **kwargs)
        self.sac = torch.compile(SACStage(model), **kwargs)

    @torch.no_grad()
    def predict(self, x: Tensor, threshold: float | None = None) -> Prediction:
        """As :meth:`SACViT.predict`."""
        thr = self.model.sac_config.threshold if threshold is None else float(threshold)
        return staged_predict(self.ee, self.sac, x, thr, self.geometry)

    def __call__(self, x: Tensor) -> Tensor:
        return self.predict(x).logits
