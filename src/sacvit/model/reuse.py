"""The feature-reuse path: what the EE stage learned, added to the SAC stage's tokens."""

from __future__ import annotations

from timm.layers import Mlp, trunc_normal_
from torch import Tensor, nn

__all__ = ["FeatureReuse"]


class FeatureReuse(nn.Module):
    """``LayerNorm → MLP(D → rD → D)`` with the last layer zero-initialised (adds 0 at start)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        trunc_normal_(self.mlp.fc1.weight, std=0.02)
        nn.init.zeros_(self.mlp.fc1.bias)
        nn.init.zeros_(self.mlp.fc2.weight)
        nn.init.zeros_(self.mlp.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x))
