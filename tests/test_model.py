import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from sacvit import SACConfig, SACViT
from sacvit.engine.loss import sac_loss

from conftest import TINY, make_tiny


def _plain(model: SACViT, img_size: int) -> VisionTransformer:
    """A timm ViT at ``img_size`` carrying ``model``'s backbone weights."""
    ref = VisionTransformer(**{**TINY, "img_size": img_size}).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("reuse.")}
    grid = img_size // TINY["patch_size"]
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1)
    ref.load_state_dict(state)
    return ref


def test_ee_stage_equals_timm_at_low_resolution(tiny, images):
    ref = _plain(tiny, 16)
    x_ee = F.interpolate(images, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        ee = tiny.forward_ee(images)
        expected = ref(x_ee)
    assert (ee.logits - expected).abs().max() < 1e-5
    assert ee.gca.shape == (6, 4, 4) and torch.isfinite(ee.gca).all()


def test_sac_with_full_window_equals_timm_at_full_resolution(images):
    model = make_tiny(reuse=False)
    ref = _plain(model, 32)
    with torch.no_grad():
        ee = model.forward_ee(images)
        got = model.forward_sac(images, ee, model.full_clusters(6, images.device))
        expected = ref(images)
    assert (got - expected).abs().max() < 1e-5


def test_reuse_at_zero_init_is_identity(images):
    torch.manual_seed(0)
    model = SACViT(sac=SACConfig(window=3, gca_start=1), **TINY).eval()  # fc2 zero-initialised
    ref = _plain(model, 32)
    with torch.no_grad():
        got = model.forward_sac(images, model.forward_ee(images), model.full_clusters(6, images.device))
        assert (got - ref(images)).abs().max() < 1e-5


def test_cluster_attention_equals_masked_attention(tiny, images):
    """Grouped dense SDPA calls == one attention with the cluster mask (reference only)."""
    from sacvit.model.attention import block_forward

    blk = tiny.blocks[0]
    torch.manual_seed(2)
    T, M = 9, 5
    x = torch.randn(3, 1 + T + M, 32)
    got, _ = block_forward(blk, x, n_target=T)
    group = torch.tensor([0] + [1] * T + [2] * M)
    allowed = (group[:, None] == group[None, :]) | (group[None, :] == 0) | (group[:, None] == 0)
    expected = blk(x, attn_mask=allowed)
    assert (got - expected).abs().max() < 1e-5


def test_threshold_zero_exits_all_and_above_one_exits_none(tiny, images):
    p0 = tiny.predict(images, threshold=0.0)
    assert (p0.stage == 0).all()
    assert torch.allclose(p0.gmacs, torch.full((6,), tiny.gmacs_ee()))
    p1 = tiny.predict(images, threshold=1.01)
    assert (p1.stage == 1).all()
    n_target, n_non = 4 * 9, 16 - 9
    assert torch.allclose(p1.gmacs, torch.full((6,), tiny.gmacs_ee() + tiny.gmacs_sac(n_target, n_non)))
    assert not torch.allclose(p0.logits, p1.logits)


@pytest.mark.parametrize("sac", [{}, {"cluster_mode": "adaptive", "rho": 0.6, "adaptive_sizes": (2, 3, 4)},
                                 {"alpha": 0.7}])
def test_predict_batch_equals_one_at_a_time(images, sac):
    model = make_tiny(**sac)
    # a threshold between the EE confidences, so that some images exit and some do not
    with torch.no_grad():
        conf = model.forward_ee(images).logits.softmax(-1).amax(-1).sort().values
    threshold = float((conf[2] + conf[3]) / 2)
    batch = model.predict(images, threshold)
    assert 0 < batch.stage.sum() < 6
    for i in range(6):
        one = model.predict(images[i:i + 1], threshold)
        assert one.stage.item() == batch.stage[i].item()
        assert torch.allclose(one.logits[0], batch.logits[i], atol=1e-5)
        assert math.isclose(one.gmacs.item(), batch.gmacs[i].item(), rel_tol=1e-6)
        assert torch.equal(one.box[0], batch.box[i])


@pytest.mark.parametrize("sac", [{}, {"cluster_mode": "adaptive", "rho": 0.6, "adaptive_sizes": (2, 3, 4)}])
def test_predict_stages_equals_predict_at_both_extremes(images, sac):
    model = make_tiny(**sac)
    ee, full = model.predict_stages(images)
    for got, want in ((ee, model.predict(images, 0.0)), (full, model.predict(images, 2.0))):
        assert torch.allclose(got.logits, want.logits, atol=1e-6)
        assert torch.equal(got.stage, want.stage) and torch.equal(got.box, want.box)
        assert torch.allclose(got.gmacs, want.gmacs)


def test_compacted_path_equals_uncompacted(tiny, images):
    """Images sent through SAC after compaction get the logits of an all-SAC batch."""
    with torch.no_grad():
        conf = tiny.forward_ee(images).logits.softmax(-1).amax(-1)
    threshold = float(conf.median())
    mixed = tiny.predict(images, threshold)
    full = tiny.predict(images, 2.0)
    sac = mixed.stage == 1
    assert sac.any() and (~sac).any()
    assert torch.allclose(mixed.logits[sac], full.logits[sac], atol=1e-5)


def test_eval_forward_is_adaptive_prediction(tiny, images):
    assert torch.allclose(tiny(images), tiny.predict(images).logits)


def test_every_parameter_gets_a_gradient(images):
    model = make_tiny(cluster_mode="adaptive", adaptive_sizes=(2, 3), rho=0.5).train()
    torch.nn.init.zeros_(model.reuse.mlp.fc2.weight)  # the real zero init: fc1 only learns after a step
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.arange(6) % 5
    for step in range(2):
        opt.zero_grad()
        logits_ee, logits_sac = model(images)
        loss = sac_loss(logits_ee, logits_sac, y, model.sac_cfg)
        loss.backward()
        if step == 0:
            opt.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_training_forward_shapes_and_warmup(tiny, images):
    tiny.train()
    a, b = tiny(images)
    c, d = tiny(images, full_window=True)
    assert a.shape == b.shape == d.shape == (6, 5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(3, 32, 32), "4-D"),
        (torch.randn(2, 1, 32, 32), "channels"),
        (torch.randn(2, 3, 2, 2), "smaller than one"),
        (torch.randn(2, 3, 48, 48), "expected"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
        (torch.full((2, 3, 32, 32), float("inf")), "NaN or infinite"),
    ],
)
def test_bad_input_gets_clear_error(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.predict(bad)


def test_bad_geometry_and_config():
    with pytest.raises(ValueError, match="divisible"):
        SACViT(**{**TINY, "img_size": 36})  # 9×9 grid, not divisible by 2
    with pytest.raises(ValueError, match="does not fit"):
        SACViT(sac=SACConfig(window=5), **TINY)  # 4×4 EE grid
    with pytest.raises(ValueError, match="alpha"):
        SACConfig(alpha=0)


def test_registered_variants_geometry():
    for name, grid, ee in [("sacvit_deit_small_patch16_224", (14, 14), (7, 7)),
                           ("sacvit_deit_small_patch16_288", (18, 18), (9, 9)),
                           ("sacvit_demo_patch8_112", (14, 14), (7, 7))]:
        m = timm.create_model(name, num_classes=3, depth=1)
        assert tuple(m.patch_embed.grid_size) == grid and m.ee_grid == ee


def test_288_and_batch_one_run():
    model = timm.create_model("sacvit_deit_small_patch16_288", depth=2, num_classes=4).eval()
    pred = model.predict(torch.randn(1, 3, 288, 288), threshold=2.0)
    assert pred.logits.shape == (1, 4) and pred.stage.item() == 1
    assert (pred.box[0, 2:] <= 288).all()
