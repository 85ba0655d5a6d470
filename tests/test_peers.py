"""Tests of the ToMe and EViT peers on a tiny timm ViT (32 px, 4×4 patches of 8 px, 17 tokens)."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from sacvit.flops import measure_macs, vit_macs
from sacvit.peers import EViTViT, ToMeViT, build_peer
from sacvit.peers.tome import bipartite_merge

N = 17  # 16 patches + CLS


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                             num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def lengths_seen(peer: torch.nn.Module, vit: VisionTransformer, x: torch.Tensor) -> tuple[list, list]:
    """Token counts the qkv and MLP of each block actually received during ``peer(x)``."""
    qkv, mlp = [], []
    hooks = [h for blk in vit.blocks for h in (
        blk.attn.qkv.register_forward_hook(lambda m, i, o: qkv.append(i[0].shape[1])),
        blk.mlp.register_forward_hook(lambda m, i, o: mlp.append(i[0].shape[1])),
    )]
    try:
        with torch.no_grad():
            peer(x)
    finally:
        for h in hooks:
            h.remove()
    return qkv, mlp


@pytest.mark.parametrize("peer_fn", [lambda m: ToMeViT(m, r=0), lambda m: EViTViT(m, keep_rate=1.0)],
                         ids=["tome_r0", "evit_keep1"])
def test_identity_settings_equal_plain(vit, images, peer_fn):
    peer = peer_fn(vit)
    with torch.no_grad():
        diff = (peer(images) - vit(images)).abs().max().item()
    assert diff < 1e-5


def test_weights_are_shared(vit):
    peer = ToMeViT(vit, r=2)
    assert peer.model is vit
    assert {p.data_ptr() for p in peer.parameters()} == {p.data_ptr() for p in vit.parameters()}


def test_tome_token_counts_and_tensors(vit, images):
    peer = ToMeViT(vit, r=2)
    assert peer.token_counts(N) == [17, 15, 13, 11]
    qkv, mlp = lengths_seen(peer, vit, images)
    assert qkv == [17, 15, 13, 11]
    assert mlp == [15, 13, 11, 9]  # merging happens between attention and MLP
    assert ToMeViT(vit, r=[3, 0, 2, 1]).token_counts(N) == [17, 14, 14, 12]


def test_tome_int_r_is_clamped_late(vit):
    # merges 6, then 5 (cap (11-1)//2), then 2 and 1 (caps (6-1)//2, (4-1)//2): clamped like the reference.
    assert ToMeViT(vit, r=6).token_counts(N) == [17, 11, 6, 4]
    assert ToMeViT(vit, r=6).merges(N) == [6, 5, 2, 1]


def test_evit_token_counts_and_tensors(vit, images):
    peer = EViTViT(vit, keep_rate=0.5, locs=(1, 2))
    # block 1: keep ceil(0.5·16)=8 + CLS + fused = 10; block 2: keep ceil(0.5·9)=5 → 7
    assert peer.token_counts(N) == [17, 17, 10, 7]
    qkv, mlp = lengths_seen(peer, vit, images)
    assert qkv == [17, 17, 10, 7]
    assert mlp == [17, 10, 7, 7]


def test_evit_default_locs_scaled_to_depth(vit):
    assert EViTViT(vit).locs == (1, 2, 3)  # 4 blocks: the relative depths of DeiT's 3, 6, 9 of 12
    deep = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=12, num_heads=2,
                             num_classes=10)
    assert EViTViT(deep).locs == (3, 6, 9)


def test_bipartite_merge_conserves_mass_and_keeps_cls():
    g = torch.Generator().manual_seed(2)
    x, size = torch.randn(3, 9, 5, generator=g), torch.randint(1, 4, (3, 9, 1), generator=g).float()
    metric = torch.randn(3, 9, 4, generator=g)
    out, out_size = bipartite_merge(x, size, metric, r=3)
    assert out.shape == (3, 6, 5) and out_size.shape == (3, 6, 1)
    torch.testing.assert_close(out_size.sum(1), size.sum(1))
    torch.testing.assert_close((out * out_size).sum(1), (x * size).sum(1))
    torch.testing.assert_close(out[:, 0], x[:, 0])  # CLS untouched and first
    assert torch.equal(out_size[:, 0], size[:, 0])


def test_tome_merging_duplicates_is_exact_with_proportional_attention():
    """Merging exact duplicate tokens loses nothing only if attention is proportional to size."""
    torch.manual_seed(3)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                            num_classes=10).eval()
    vit.pos_embed.data.zero_()  # so equal patches give equal tokens
    x = torch.randn(2, 3, 32, 32)
    x[..., 8:16], x[..., 24:32] = x[..., 0:8], x[..., 16:24]  # patch 2j+1 = patch 2j (B/A pairs)
    peer = ToMeViT(vit, r=[8, 0, 0, 0])
    qkv, _ = lengths_seen(peer, vit, x)
    assert qkv == [17, 9, 9, 9]
    with torch.no_grad():
        assert (peer(x) - vit(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("peer_fn", [
    lambda m: ToMeViT(m, r=0), lambda m: ToMeViT(m, r=3), lambda m: ToMeViT(m, r=[4, 2, 1, 0]),
    lambda m: EViTViT(m, keep_rate=0.5, locs=(0, 2)), lambda m: EViTViT(m, keep_rate=0.3),
], ids=["tome0", "tome3", "tome_list", "evit05", "evit03"])
def test_gmacs_closed_form_matches_measurement(vit, images, peer_fn):
    peer = peer_fn(vit)
    measured = measure_macs(lambda: peer(images[:1])) / 1e9
    assert peer.gmacs() == pytest.approx(measured, rel=0.01)


def test_identity_gmacs_equal_plain_vit(vit):
    plain = vit_macs(4, 8, 64, 4, 10) / 1e9
    assert ToMeViT(vit, r=0).gmacs() == pytest.approx(plain, rel=1e-12)
    assert EViTViT(vit, keep_rate=1.0).gmacs() == pytest.approx(plain, rel=1e-12)
    assert ToMeViT(vit, r=2).gmacs() < plain and EViTViT(vit, keep_rate=0.5).gmacs() < plain


@pytest.mark.parametrize("peer_fn", [lambda m: ToMeViT(m, r=3), lambda m: EViTViT(m, keep_rate=0.5, locs=(1, 2))],
                         ids=["tome", "evit"])
def test_finite_and_batch_consistent(vit, images, peer_fn):
    peer = peer_fn(vit)
    with torch.no_grad():
        batched = peer(images)
        alone = torch.cat([peer(images[i:i + 1]) for i in range(len(images))])
    assert batched.shape == (4, 10) and torch.isfinite(batched).all()
    assert (batched - alone).abs().max().item() < 1e-5
    assert (batched - vit(images)).abs().max().item() > 1e-4  # it does change something


def test_build_peer(vit):
    assert isinstance(build_peer("tome", vit, r=1), ToMeViT)
    assert isinstance(build_peer("EViT", vit, keep_rate=0.7), EViTViT)
    with pytest.raises(ValueError, match="valid names: evit, tome"):
        build_peer("dynamicvit", vit)


@pytest.mark.parametrize("name, kw, match", [
    ("tome", dict(r=-1), "non-negative"),
    ("tome", dict(r=[1, 2]), "2 entries but the model has 4 blocks"),
    ("tome", dict(r=9), "too large for block 0"),
    ("tome", dict(r=[2, 2, 9, 0]), "too large for block 2"),
    ("evit", dict(keep_rate=0.0), r"keep_rate must be in \(0, 1\]"),
    ("evit", dict(keep_rate=1.5), r"keep_rate must be in \(0, 1\]"),
    ("evit", dict(keep_rate=0.5, locs=(4,)), "block indices"),
])
def test_bad_arguments(vit, name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_peer(name, vit, **kw)


def test_bad_models():
    no_cls = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                               num_classes=10, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        ToMeViT(no_cls)
    with pytest.raises(ValueError, match="VisionTransformer"):
        EViTViT(torch.nn.Linear(3, 3))
