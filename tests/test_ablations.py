"""Each ablation switch of SACConfig does what it says."""

import pytest
import torch

from sacvit.engine.loss import sac_loss

from conftest import make_tiny


def test_full_attention_is_a_plain_block_over_the_same_tokens(images):
    model = make_tiny(attention="full")
    with torch.no_grad():
        ee = model.forward_ee(images)
        c = model.policy.cluster(ee.gca, 3)
        z = model.sac_tokens(images, ee, c)
        got = model.sac_blocks(z, c.num_target)
        ref = z
        for blk in model.blocks:
            ref = blk(ref)  # timm's own block: full attention over [target, CLS, non-target]
        clustered = make_tiny().sac_blocks(z, c.num_target)
    assert torch.allclose(got, ref, atol=1e-5)
    assert (clustered - ref).abs().max() > 1e-3
    full = 4 * 9 + 1 + 7
    assert model.gmacs_sac(36, 7) > make_tiny().gmacs_sac(36, 7)  # full attention costs more
    assert model.gmacs_sac(36, 7) == pytest.approx(
        (3 * 4 * 4 * 32 * 36 + 4 * (12 * full * 32 * 32 + 2 * full * full * 32) + 32 * 5
         + 16 * 2 * 32 * 128) / 1e9)


def test_without_the_kl_term_the_ee_head_gets_no_gradient():
    torch.manual_seed(0)
    ee, sac = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    sac_loss(ee, sac, y, kl_weight=0.0).backward()
    assert ee.grad is None or torch.count_nonzero(ee.grad) == 0
    sac_loss(ee, sac, y).backward()
    assert torch.count_nonzero(ee.grad) > 0


@pytest.mark.parametrize("policy", ["center", "random", "gca"])
def test_window_policies(images, policy):
    model = make_tiny(window_policy=policy)
    torch.manual_seed(0)
    with torch.no_grad():
        ee = model.forward_ee(images)
        boxes = torch.stack([model.policy.cluster(ee.gca, 2).box for _ in range(4)])  # (4 draws, B, 4)
    token_px = 8  # ee_scale 2 × patch 4
    if policy == "center":
        assert (boxes == torch.tensor([1, 1, 3, 3]) * token_px).all()  # the middle 2×2 of a 4×4 grid
    elif policy == "random":
        assert len({tuple(b.tolist()) for b in boxes.flatten(0, 1)}) > 3
        assert (boxes >= 0).all() and (boxes <= 32).all()
    else:  # the window with the largest GCA mass, the same at every draw
        assert (boxes == boxes[0]).all()
        mass = torch.nn.functional.avg_pool2d(ee.gca[:, None], 2, stride=1).flatten(1)
        best = mass.argmax(1)
        assert torch.equal(boxes[0, :, 1] // token_px, best // 3) and torch.equal(boxes[0, :, 0] // token_px, best % 3)


def test_no_reuse_passes_the_ee_embeddings_through(images):
    model = make_tiny(reuse=False)
    assert model.reuse is None
    with torch.no_grad():
        ee = model.forward_ee(images)
        c = model.policy.cluster(ee.gca, 3)
        z = model.sac_tokens(images, ee, c)
    non_target = torch.stack([ee.embed[b, c.non_target[b]] for b in range(6)])
    assert torch.equal(z[:, c.num_target + 1:], model.norm_pre(non_target))


def test_whole_grid_window_is_no_clustering(images):
    model = make_tiny(window=4)  # the 4×4 EE grid: every token is target, at full resolution
    with torch.no_grad():
        ee = model.forward_ee(images)
        c = model.policy.cluster(ee.gca, 4)
        full = model.policy.full(6, images.device)
    assert c.num_target == 64 and c.num_non_target == 0
    assert torch.equal(c.target, full.target)
    assert model.gmacs_sac(64, 0) > model.gmacs_ee()
