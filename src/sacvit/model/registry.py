"""timm registrations of the SAC-ViT variants and loading of local backbone checkpoints.

Every variant is a ``@register_model`` function, so ``timm.create_model('sacvit_deit_small_patch16_224')``
works once :mod:`sacvit` is imported. Nothing is ever downloaded: pretrained weights come from a
local file, given as ``checkpoint=PATH`` or timm's ``pretrained_cfg_overlay=dict(file=PATH)``.
Official DeiT checkpoints (timm ``.pth``/``.safetensors``, or facebookresearch's ``{'model': …}``)
load unchanged: SAC-ViT has exactly DeiT's parameter names plus ``reuse.*``; a DVT loads the same
file into every one of its stages (``dvt_*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from ..config import SACConfig
from ..meta import FORMAT, CheckpointError, CheckpointMeta, read_header
from .dvt import DVT
from .family import CFViT, LFViT
from .sacvit import SACViT

__all__ = ["read_state_dict", "load_backbone_weights", "FAMILY_PREFIXES", "method_of"]

#: Name prefixes of the registered two-stage models (SACViT and its predecessors), by method.
FAMILY_PREFIXES = {"sacvit": "sacvit_", "cfvit": "cfvit_", "lfvit": "lfvit_"}


def method_of(name: str) -> str | None:
    """The method of a registered model name (``"sacvit"``, ``"cfvit"``, ``"lfvit"``), ``None`` for others."""
    return next((m for m, prefix in FAMILY_PREFIXES.items() if name.startswith(prefix)), None)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint (``.safetensors``, or a ``.pth`` read with ``weights_only``).

    Wrappers (``{'model': …}``, ``{'state_dict': …}``) and DDP's ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code, truncated download …
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(model: VisionTransformer | DVT, path: str | Path, strict_head: bool = False) -> list[str]:
    """Load a DeiT/timm ViT (or SAC-ViT) checkpoint into ``model``.

    Position embeddings are resampled by timm's filter when the grid differs (e.g. DeiT-224
    weights into a 288-px model). A head of another class count is skipped unless ``strict_head``.

    Returns:
        The names of the parameters left at their initialisation (``reuse.*``, maybe ``head.*``).

    Raises:
        ValueError: a width that does not match the model, keys that belong to another model,
            or an unreadable file — always naming the path.
    """
    if isinstance(model, DVT):
        return _load_dvt(model, path, strict_head)
    state = read_state_dict(path)
    width = next((state[k].shape[-1] for k in ("cls_token", "pos_embed") if k in state), None)
    if width is None:
        raise ValueError(f"{path} is not a ViT checkpoint (no cls_token/pos_embed)")
    if width != model.embed_dim:
        raise ValueError(f"{path}: checkpoint width {width} does not match the model's width "
                         f"{model.embed_dim}; pick the variant of the checkpoint's size")
    state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    if "head.weight" in state and state["head.weight"].shape != own["head.weight"].shape:
        if strict_head:
            raise ValueError(f"{path}: head has {state['head.weight'].shape[0]} classes, "
                             f"the model {own['head.weight'].shape[0]}")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    result = model.load_state_dict(state, strict=False)
    allowed = ("reuse.", "head.")
    bad_missing = [k for k in result.missing_keys if not k.startswith(allowed)]
    if result.unexpected_keys or bad_missing:
        raise ValueError(f"{path} does not match {type(model).__name__}: unexpected keys "
                         f"{result.unexpected_keys[:5]}, missing keys {bad_missing[:5]}")
    return list(result.missing_keys)


def _load_dvt(model: DVT, path: str | Path, strict_head: bool = False) -> list[str]:
    """A trained DVT's weights (``stages.*`` keys) load whole; DeiT/timm/SAC-ViT backbone weights
    load into every stage (:func:`load_backbone_weights`, position embeddings resampled per stage),
    the reuse layers staying at their zero initialisation. Returns the last stage's parameters left
    at their initialisation (``head.*`` when the head was skipped)."""
    state = read_state_dict(path)
    if any(k.startswith("stages.") for k in state):
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} does not match this DVT: {err}") from err
        return []
    return [load_backbone_weights(stage, path, strict_head) for stage in model.stages][-1]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0", **kwargs,
    }


_DEMO = dict(input_size=(3, 112, 112), num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    "sacvit_deit_tiny_patch16_224.untrained": _cfg(),
    "sacvit_deit_small_patch16_224.untrained": _cfg(),
    "sacvit_deit_base_patch16_224.untrained": _cfg(),
    "sacvit_deit_small_patch16_288.untrained": _cfg(input_size=(3, 288, 288), crop_pct=1.0),
    "sacvit_demo_patch8_112.untrained": _cfg(**_DEMO),
    "cfvit_deit_small_patch16_224.untrained": _cfg(),
    "cfvit_demo_patch8_112.untrained": _cfg(**_DEMO),
    "lfvit_deit_small_patch16_224.untrained": _cfg(),
    "lfvit_demo_patch8_112.untrained": _cfg(**_DEMO),
    "deit_demo_patch8_112.untrained": _cfg(**_DEMO),
    "dvt_deit_small_patch16_224.untrained": _cfg(first_conv="stages.2.patch_embed.proj", classifier="stages.2.head"),
    "dvt_demo_patch8_112.untrained": _cfg(**_DEMO, first_conv="stages.2.patch_embed.proj", classifier="stages.2.head"),
})

DEMO_ARGS = dict(img_size=112, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=10)


def _with_stored_sac(variant: str, checkpoint: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A trained SAC-ViT checkpoint is the truth about how to run it: its SAC configuration (window,
    exit threshold η, …) is restored; a ``sac=`` that contradicts it is refused. DeiT/timm weights
    and plain-ViT sacvit checkpoints carry none and load as backbone weights."""
    try:
        raw = read_header(checkpoint)
    except CheckpointError:  # DeiT/timm .pth or other weights: load_backbone_weights reads them
        return kwargs
    if raw.get("format") != FORMAT:
        return kwargs
    meta = CheckpointMeta.from_header(raw, checkpoint)
    if meta.sac_config is None:
        return kwargs
    asked = kwargs.get("sac")
    if asked is None:
        return {**kwargs, "sac": meta.sac_config}
    wanted = asked if isinstance(asked, SACConfig) else SACConfig.from_dict({**meta.sac_config.to_dict(), **asked})
    if wanted != meta.sac_config:
        changed = {k: (getattr(meta.sac_config, k), getattr(wanted, k)) for k in meta.sac_config.to_dict()
                   if getattr(meta.sac_config, k) != getattr(wanted, k)}
        raise ValueError(f"{variant}: {checkpoint} is a trained SAC-ViT whose SAC configuration differs from "
                         f"sac= ({', '.join(f'{k}: stored {a!r}, asked {b!r}' for k, (a, b) in changed.items())}); "
                         f"load it with sacvit.from_pretrained({str(checkpoint)!r}) to run it as trained")
    return {**kwargs, "sac": wanted}


def _create(variant: str, model_cls: type[nn.Module], pretrained: bool, **kwargs: Any) -> nn.Module:
    """Build ``variant``, load a local checkpoint, and wrap it for ``features_only`` as timm does.

    Only timm's public builder is used: ``build_model_with_cfg`` constructs the model through a
    factory that loads the checkpoint first, then (``features_only=True``) wraps it in timm's
    ``forward_intermediates`` feature getter and prunes the unused blocks and head — so
    ``features_only=True`` works with ``checkpoint=PATH`` too.
    """
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    checkpoint = kwargs.pop("checkpoint", None) or overlay.get("file")
    if pretrained and not checkpoint:
        raise ValueError(f"{variant}: sacvit never downloads weights; pass checkpoint=PATH "
                         f"or pretrained_cfg_overlay=dict(file=PATH) with a local DeiT/timm file")
    feature_cfg = dict(out_indices=kwargs.pop("out_indices", 3),  # timm's ViT default: the last three blocks
                       feature_cls=kwargs.pop("feature_cls", "getter"))
    name = feature_cfg["feature_cls"]
    if kwargs.get("features_only") and getattr(name, "__name__", str(name)).lower() not in ("getter", "featuregetternet"):
        raise ValueError(f"{variant}: features_only supports feature_cls='getter' "
                         f"(forward_intermediates), as timm's ViT does; got {name!r}")

    if checkpoint and issubclass(model_cls, SACViT):
        kwargs = _with_stored_sac(variant, checkpoint, kwargs)
    if issubclass(model_cls, DVT) and kwargs.get("features_only"):
        raise ValueError(f"{variant}: a DVT cascade has no single feature pyramid; features_only is not supported "
                         f"(use model.stages[i] for one stage's features)")

    def build(**model_kwargs: Any) -> nn.Module:
        model = model_cls(**model_kwargs)
        if checkpoint:
            load_backbone_weights(model, checkpoint)
        return model

    return build_model_with_cfg(build, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)


@register_model
def sacvit_deit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> SACViT:
    """SAC-ViT on DeiT-Tiny: 224 px full / 112 px EE, 14×14 / 7×7 tokens."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("sacvit_deit_tiny_patch16_224", SACViT, pretrained, **dict(args, **kwargs))


@register_model
def sacvit_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> SACViT:
    """SAC-ViT on DeiT-Small: 224 px full / 112 px EE, 14×14 / 7×7 tokens (the paper's main model)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("sacvit_deit_small_patch16_224", SACViT, pretrained, **dict(args, **kwargs))


@register_model
def sacvit_deit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> SACViT:
    """SAC-ViT on DeiT-Base: 224 px full / 112 px EE, 14×14 / 7×7 tokens."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("sacvit_deit_base_patch16_224", SACViT, pretrained, **dict(args, **kwargs))


@register_model
def sacvit_deit_small_patch16_288(pretrained: bool = False, **kwargs: Any) -> SACViT:
    """SAC-ViT on DeiT-Small at 288 px: 18×18 full / 9×9 EE tokens at 144 px."""
    args = dict(img_size=288, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("sacvit_deit_small_patch16_288", SACViT, pretrained, **dict(args, **kwargs))


@register_model
def sacvit_demo_patch8_112(pretrained: bool = False, **kwargs: Any) -> SACViT:
    """CPU demo SAC-ViT: 112 px full / 56 px EE at patch 8 keeps the paper's 14×14 / 7×7 geometry.

    Its 4 blocks accumulate the global class attention from block 1 (``gca_start=None``: a quarter
    of the depth, as DeiT's 12 blocks start at 3).
    """
    return _create("sacvit_demo_patch8_112", SACViT, pretrained, **dict(DEMO_ARGS, **kwargs))


@register_model
def deit_demo_patch8_112(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The plain ViT of the demo SAC-ViT's size: the same-size full-resolution baseline."""
    return _create("deit_demo_patch8_112", VisionTransformer, pretrained, **dict(DEMO_ARGS, **kwargs))


@register_model
def cfvit_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> CFViT:
    """CF-ViT on DeiT-Small: 7×7 coarse tokens at 112 px, the top half refined at 224 px."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("cfvit_deit_small_patch16_224", CFViT, pretrained, **dict(args, **kwargs))


@register_model
def cfvit_demo_patch8_112(pretrained: bool = False, **kwargs: Any) -> CFViT:
    """CF-ViT of the CPU demo's size and geometry (14×14 / 7×7 tokens)."""
    return _create("cfvit_demo_patch8_112", CFViT, pretrained, **dict(DEMO_ARGS, **kwargs))


@register_model
def lfvit_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> LFViT:
    """LF-ViT on DeiT-Small: localisation at 112 px, a 5×5-token focus region at 224 px."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("lfvit_deit_small_patch16_224", LFViT, pretrained, **dict(args, **kwargs))


@register_model
def lfvit_demo_patch8_112(pretrained: bool = False, **kwargs: Any) -> LFViT:
    """LF-ViT of the CPU demo's size and geometry (14×14 / 7×7 tokens)."""
    return _create("lfvit_demo_patch8_112", LFViT, pretrained, **dict(DEMO_ARGS, **kwargs))


@register_model
def dvt_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> DVT:
    """DVT on DeiT-Small: three DeiT-S stages on 7×7, 10×10, 14×14 tokens (112, 160, 224 px)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("dvt_deit_small_patch16_224", DVT, pretrained, **dict(args, **kwargs))


@register_model
def dvt_demo_patch8_112(pretrained: bool = False, **kwargs: Any) -> DVT:
    """DVT of the CPU demo's size: three demo ViTs on 7×7, 10×10, 14×14 tokens (56, 80, 112 px)."""
    return _create("dvt_demo_patch8_112", DVT, pretrained, **dict(DEMO_ARGS, **kwargs))
