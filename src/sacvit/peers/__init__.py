"""Training-free token-reduction peers of SAC-ViT, applied to an unmodified timm ViT.

* :class:`ToMeViT` — Token Merging (Bolya et al., ICLR 2023);
* :class:`EViTViT` — EViT token reorganisation (Liang et al., ICLR 2022).

Both share the wrapped model's weights and expose ``forward``, ``token_counts`` and ``gmacs``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sacvit.peers.evit import EViTViT
from sacvit.peers.tome import ToMeViT

__all__ = ["ToMeViT", "EViTViT", "PEERS", "build_peer"]

PEERS: dict[str, type[nn.Module]] = {"tome": ToMeViT, "evit": EViTViT}


def build_peer(name: str, model: nn.Module, **kw: Any) -> nn.Module:
    """Wrap ``model`` with the peer method ``name``.

    Args:
        name: ``"tome"`` (keyword ``r``) or ``"evit"`` (keywords ``keep_rate``, ``locs``).
        model: a timm ``VisionTransformer`` with a class token.
        **kw: the peer's keyword arguments.

    Returns:
        The peer module, sharing ``model``'s weights.

    Raises:
        ValueError: for an unknown name, an unsupported model or invalid arguments.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in PEERS:
        raise ValueError(f"unknown peer {name!r}; valid names: {', '.join(sorted(PEERS))}")
    return PEERS[key](model, **kw)
