"""Shared tiny configurations: every test runs in seconds on 2 CPU cores."""

import pytest
import torch

import sacvit  # noqa: F401  (registers the timm variants)
from sacvit import SACConfig, SACViT

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)


def make_tiny(**sac) -> SACViT:
    """An 8×8-token SAC-ViT (4×4 EE grid) with random weights, incl. a non-zero reuse MLP."""
    torch.manual_seed(0)
    model = SACViT(sac=SACConfig(**{"window": 3, "gca_start": 1, **sac}), **TINY)
    if model.reuse is not None:  # leave the zero init so that the reuse term is exercised
        torch.nn.init.normal_(model.reuse.mlp.fc2.weight, std=0.02)
    return model.eval()


@pytest.fixture
def tiny() -> SACViT:
    return make_tiny()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(6, 3, 32, 32)
