"""One dataclass holds every SAC-ViT choice that is not part of the timm backbone.

The backbone geometry (image size, patch size, width, depth, heads) lives in timm's
``VisionTransformer`` arguments; :class:`SACConfig` holds the two-stage method: how the early-exit
image is made, how the semantic score is accumulated, how tokens are clustered, the feature-reuse
path and the default exit threshold — architecture and inference, what a checkpoint must carry to
run the model. How it is trained (the loss weights, the selection warm-up) is
:class:`~sacvit.engine.train.TrainConfig`'s. Each field marked *(choice)* in DESIGN.md is a field
here or there, so it can be changed and compared.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Self

__all__ = ["SACConfig", "DVTConfig", "ConfigTypeError"]

ClusterMode = Literal["window", "adaptive"]
WindowPolicy = Literal["gca", "center", "random"]
AttentionMode = Literal["cluster", "full"]


class ConfigTypeError(TypeError, ValueError):
    """A configuration value of the wrong type (both a ``TypeError`` and a ``ValueError``)."""


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (int, float, bool, str, Literal, X | None, tuple[int, ...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:  # finite: NaN passes no range check and inf overflows sizes
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """``hint`` in words for an error message: ``an int or None``, ``one of 'a', 'b'`` …"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if hint is float:
        return "a finite number"
    return "None" if hint is type(None) else f"{'an' if hint is int else 'a'} {hint.__name__}"


def _check_types(config: Any) -> None:
    """``ConfigTypeError`` naming the first field of a config dataclass whose value has the wrong type."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ConfigTypeError(f"{type(config).__name__}.{f.name} must be {_describe(hints[f.name])}, got {value!r}")


def _from_dict(cls: type, d: Any) -> Any:
    """``cls(**d)`` for a config dataclass, refusing a non-dict or unknown keys with a clear message."""
    if not isinstance(d, dict):
        raise ConfigTypeError(f"a {cls.__name__} must be a JSON object / dict, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)


class _JsonConfig:
    """``to_dict``/``from_dict`` of the method configurations (checkpoint metadata, timm kwargs)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists), for checkpoint metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys or a value out of range.
            ConfigTypeError: ``d`` is not a dict or a value has the wrong type (also a ValueError).
        """
        return _from_dict(cls, d)


@dataclass
class SACConfig(_JsonConfig):
    """Configuration of the SAC-ViT method on top of a ViT backbone.

    Attributes:
        ee_scale: downsampling factor of the early-exit image (2: 224 → 112 px, 7×7 tokens).
        threshold: default exit threshold η on the EE top-1 softmax probability for ``predict``.
        gca_beta: EMA factor β of the global class attention, ``g = β·g + (1−β)·a_l``.
        gca_start: first block (0-indexed) whose CLS attention enters the EMA; ``None``: a quarter
            of the depth (3 of DeiT's 12 blocks, as CF-/LF-ViT; 1 of the demo's 4). Must be < depth.
        cluster_mode: ``"window"`` (one m×m window of EE tokens with the largest GCA mass, fixed
            token counts) or ``"adaptive"`` (m per image, smallest window holding ``rho`` of the mass).
        window: m, the window side in EE tokens for ``"window"`` mode (5 on the 7×7 grid).
        window_policy: where the window goes: ``"gca"`` (largest GCA mass, the method),
            ``"center"`` or ``"random"`` (the ablations that test whether the semantics matter).
        alpha: fraction of the window's EE tokens (top by GCA) that form the target cluster.
        alpha_whole_grid: apply ``alpha`` also when the window is the whole EE grid, i.e. the top
            ``⌈α·h·w⌉`` tokens anywhere on the grid are target (CF-ViT's selection). By default a
            whole-grid window means every token is target (no clustering).
        adaptive_sizes: candidate window sides for ``"adaptive"`` mode.
        rho: GCA mass fraction the adaptive window must hold.
        attention: ``"cluster"`` (each cluster attends within itself, CLS sees all) or ``"full"``
            (one attention over every SAC token: the ablation of the cluster attention).
        reuse: add the feature-reuse term ``reuse(z_ee)`` to the SAC tokens.
        reuse_non_target: also add it to the non-target (reused EE) tokens.
        reuse_mlp_ratio: hidden width of the reuse MLP as a multiple of the embedding width.
        exit_score: what η is compared with: ``"max_prob"`` (the paper's), ``"temperature"``
            (max-probability of ``softmax(logits / exit_temperature)``) or ``"margin"`` (top-1 −
            top-2 probability); see :mod:`sacvit.model.exit_score`.
        exit_temperature: T of the ``"temperature"`` score (> 0; below 1 sharpens).
    """

    ee_scale: int = 2
    threshold: float = 0.76
    gca_beta: float = 0.99
    gca_start: int | None = None
    cluster_mode: ClusterMode = "window"
    window: int = 5
    window_policy: WindowPolicy = "gca"
    alpha: float = 1.0
    alpha_whole_grid: bool = False
    adaptive_sizes: tuple[int, ...] = (3, 4, 5, 6, 7)
    rho: float = 0.7
    attention: AttentionMode = "cluster"
    reuse: bool = True
    reuse_non_target: bool = True
    reuse_mlp_ratio: float = 4.0
    exit_score: str = "max_prob"
    exit_temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self)
        self.adaptive_sizes = tuple(int(s) for s in self.adaptive_sizes)
        checks = [
            (self.ee_scale >= 1, f"ee_scale must be ≥ 1, got {self.ee_scale}"),
            (self.threshold >= 0, f"threshold must be ≥ 0 (above 1: never exit), got {self.threshold}"),
            (0.0 < self.gca_beta < 1.0, f"gca_beta must be in (0, 1), got {self.gca_beta}"),
            (self.gca_start is None or self.gca_start >= 0, f"gca_start must be ≥ 0, got {self.gca_start}"),
            (self.cluster_mode in ("window", "adaptive"),
             f"cluster_mode must be 'window' or 'adaptive', got {self.cluster_mode!r}"),
            (self.window >= 1, f"window must be ≥ 1, got {self.window}"),
            (self.window_policy in ("gca", "center", "random"),
             f"window_policy must be 'gca', 'center' or 'random', got {self.window_policy!r}"),
            (self.attention in ("cluster", "full"), f"attention must be 'cluster' or 'full', got {self.attention!r}"),
            (0.0 < self.alpha <= 1.0, f"alpha must be in (0, 1], got {self.alpha}"),
            (len(self.adaptive_sizes) > 0 and min(self.adaptive_sizes) >= 1,
             f"adaptive_sizes must be positive window sides, got {self.adaptive_sizes}"),
            (0.0 < self.rho <= 1.0, f"rho must be in (0, 1], got {self.rho}"),
            (self.reuse_mlp_ratio > 0, f"reuse_mlp_ratio must be > 0, got {self.reuse_mlp_ratio}"),
            (self.exit_score in ("max_prob", "temperature", "margin"),
             f"exit_score must be 'max_prob', 'temperature' or 'margin', got {self.exit_score!r}"),
            (self.exit_temperature > 0, f"exit_temperature must be > 0, got {self.exit_temperature}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)



@dataclass
class DVTConfig(_JsonConfig):
    """Configuration of the DVT cascade (:class:`~sacvit.model.dvt.DVT`) on top of its ViT stages.

    Attributes:
        grids: token-grid sides of the stages, strictly increasing; the last is the model's
            full-resolution grid (``img_size / patch_size``). DVT's DeiT-S: 7×7, 10×10, 14×14.
        threshold: the one exit threshold η on the top-1 softmax probability, applied after every
            stage but the last (one knob, as SAC-ViT's; per-stage thresholds are not supported).
        feature_reuse: add the upstream stage's final tokens (through a small MLP, upsampled) to
            the downstream stage's patch embeddings.
        relation_reuse: add the upstream stage's attention logits (mapped across layers and heads,
            resized) to the downstream stage's attention logits.
        reuse_mlp_ratio: hidden width of the feature-reuse MLP as a multiple of the embedding
            width (1: DVT's reuse path is a light transformation; its cost is paid per exit).
    """

    grids: tuple[int, ...] = (7, 10, 14)
    threshold: float = 0.76
    feature_reuse: bool = True
    relation_reuse: bool = True
    reuse_mlp_ratio: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self)
        self.grids = tuple(int(g) for g in self.grids)
        g = self.grids
        checks = [
            (len(g) >= 2, f"grids must name at least two stages (a cascade), got {g}"),
            (all(s >= 1 for s in g) and all(a < b for a, b in zip(g, g[1:])),
             f"grids must be positive and strictly increasing, got {g}"),
            (self.threshold >= 0, f"threshold must be ≥ 0 (above 1: never exit), got {self.threshold}"),
            (self.reuse_mlp_ratio > 0, f"reuse_mlp_ratio must be > 0, got {self.reuse_mlp_ratio}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

