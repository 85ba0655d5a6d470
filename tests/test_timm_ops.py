"""sacvit.timm_ops (the one module that re-runs timm block internals) against timm's own forward,
over every block option that changes those internals: qk_norm, layer scale, scale_attn_norm."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from sacvit import SACConfig, SACViT
from sacvit import timm_ops as ops
from sacvit.model.attention import cluster_block, ee_block
from sacvit.peers import EViTViT, ToMeViT

OPTIONS = [dict(qk_norm=q, init_values=i, scale_attn_norm=s)
           for q, i, s in itertools.product((False, True), (None, 1e-5), (False, True))]
IDS = [f"qk_norm={o['qk_norm']}-ls={o['init_values']}-scale_attn_norm={o['scale_attn_norm']}" for o in OPTIONS]
ARCH = dict(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its init (norm weights of 1, layer scale of 1e-5, zero biases …), so
    that a part that were skipped or applied twice would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _vit(options: dict, img_size: int = 32) -> VisionTransformer:
    torch.manual_seed(0)
    return _perturb(VisionTransformer(**{**ARCH, "img_size": img_size}, **options))


def _tokens(n: int = 17, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, n, ARCH["embed_dim"], generator=torch.Generator().manual_seed(1))


def _timm_cls_attention(blk, x: torch.Tensor) -> torch.Tensor:
    """timm's own attention probabilities of the CLS query ``(B, H, N)``: the input of the attention
    dropout in timm's unfused path."""
    seen = []
    handle = blk.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    fused, blk.attn.fused_attn = blk.attn.fused_attn, False
    try:
        with torch.no_grad():
            blk(x)
    finally:
        blk.attn.fused_attn = fused
        handle.remove()
    return seen[0][:, :, 0]


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_block_passes_equal_timm_block_forward(options):
    vit = _vit(options)
    x = _tokens()
    group = torch.tensor([1] * 9 + [0] + [2] * 7)  # [target (9), CLS, non-target (7)]
    allowed = (group[:, None] == group[None, :]) | (group[None, :] == 0) | (group[:, None] == 0)
    for blk in vit.blocks:
        with torch.no_grad():
            expected = blk(x)
            plain = ops.block_forward(blk, x)
            ee, row = ee_block(blk, x, cls_logits=True)
            full = cluster_block(blk, x, 9, within_clusters=False)  # the attention='full' ablation
            whole = cluster_block(blk, x, x.shape[1] - 1)  # every token is target: plain attention
            half, q, k = ops.attention_half(blk, x)
            clustered = cluster_block(blk, x, 9)
            masked = blk(x, attn_mask=allowed)
        # the same operations in the same order as timm: bit for bit
        assert torch.equal(plain, expected) and torch.equal(ee, expected) and torch.equal(full, expected)
        assert torch.allclose(whole, expected, atol=1e-6, rtol=1e-5)
        assert torch.allclose(clustered, masked, atol=1e-5, rtol=1e-5)  # cluster attention = timm + its mask
        assert torch.allclose(ops.mlp_residual(blk, half), expected, atol=1e-6, rtol=1e-5)
        # the CLS row (GCA, EViT): timm's own attention probabilities, with q/k norms and scale
        cls = _timm_cls_attention(blk, x)
        assert torch.allclose(row.softmax(-1), cls, atol=1e-6)
        assert torch.allclose(ops.cls_logits(blk, q, k).softmax(-1), cls, atol=1e-6)
        x = expected


def test_block_passes_equal_timm_in_training_with_drop_path():
    """Training mode: the same random draws (drop path, dropout) give the same output as timm."""
    torch.manual_seed(0)
    vit = _perturb(VisionTransformer(**ARCH, qk_norm=True, init_values=1e-5, drop_path_rate=0.5,
                                     proj_drop_rate=0.2, attn_drop_rate=0.0)).train()
    x = _tokens()
    for blk in vit.blocks:
        torch.manual_seed(7)
        expected = blk(x)
        torch.manual_seed(7)
        got = ops.block_forward(blk, x)
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)


def _sacvit(options: dict) -> SACViT:
    torch.manual_seed(0)
    model = SACViT(sac=SACConfig(window=3, gca_start=1, reuse=False), **ARCH, **options)
    return _perturb(model)


def _plain_like(model: SACViT, options: dict, img_size: int) -> VisionTransformer:
    ref = VisionTransformer(**{**ARCH, "img_size": img_size}, **options).eval()
    state = dict(model.state_dict())
    grid = img_size // ARCH["patch_size"]
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1)
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_sacvit_stages_equal_timm_vit(options):
    """The EE stage is timm's ViT at the EE resolution; the SAC stage with the whole image as
    target (or attention='full' over the same tokens) is timm's ViT at full resolution."""
    model = _sacvit(options)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x_ee = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        ee = model.forward_ee(x)
        assert torch.allclose(ee.logits, _plain_like(model, options, 16)(x_ee), atol=1e-5, rtol=1e-4)
        whole = model.forward_sac(x, ee, model.policy.full(4, x.device))
        assert torch.allclose(whole, _plain_like(model, options, 32)(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_peers_at_identity_settings_equal_timm(options):
    vit = _vit(options)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vit(x)
        assert torch.allclose(ToMeViT(vit, r=0)(x), expected, atol=1e-5, rtol=1e-4)
        assert torch.allclose(EViTViT(vit, keep_rate=1.0)(x), expected, atol=1e-5, rtol=1e-4)
        # a reducing EViT block: its attention half and class attention are timm's
        tokens = ops.embed_tokens(vit, x)
        assert torch.allclose(tokens, vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x)))))
        reduced = EViTViT(vit, keep_rate=0.5, locs=(0,))._reduce(vit.blocks[0], tokens, 8)
    assert reduced.shape == (4, 1 + 8 + 1, ARCH["embed_dim"]) and torch.isfinite(reduced).all()


def test_timm_ops_is_the_only_module_touching_block_internals():
    """No other sacvit module re-runs a timm block part (the attribute names of Block/Attention)."""
    import pathlib
    import re

    import sacvit

    root = pathlib.Path(sacvit.__file__).parent
    parts = r"(?<!ops)\.(qkv|q_norm|k_norm|attn_drop|proj_drop|ls1|ls2|drop_path1|drop_path2|norm1|norm2)\b|attn\.(norm|scale|proj)\b"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "timm_ops.py" and re.search(parts, p.read_text())]
    assert offenders == []
