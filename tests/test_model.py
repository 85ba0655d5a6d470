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
        got = model.forward_sac(images, ee, model.policy.full(6, images.device))
        expected = ref(images)
    assert (got - expected).abs().max() < 1e-5


def test_reuse_at_zero_init_is_identity(images):
    torch.manual_seed(0)
    model = SACViT(sac=SACConfig(window=3, gca_start=1), **TINY).eval()  # fc2 zero-initialised
    ref = _plain(model, 32)
    with torch.no_grad():
        got = model.forward_sac(images, model.forward_ee(images), model.policy.full(6, images.device))
        assert (got - ref(images)).abs().max() < 1e-5


def test_gca_equals_a_per_block_ema_of_the_cls_attention(tiny, images):
    """Reference: run timm's own blocks on the EE input, build every block's full attention
    matrix from its qkv weights, and accumulate ``g = β·g + (1−β)·a_l`` block by block."""
    ref = _plain(tiny, 16)
    x_ee = F.interpolate(images, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    beta, start = tiny.sac_config.gca_beta, tiny.gca_start
    with torch.no_grad():
        z = ref.norm_pre(ref._pos_embed(ref.patch_embed(x_ee)))
        g = torch.zeros(6, 16)
        for i, blk in enumerate(ref.blocks):
            attn = blk.attn
            qkv = attn.qkv(blk.norm1(z)).reshape(6, 17, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
            a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)  # (B, H, N, N)
            if i >= start:
                g = beta * g + (1 - beta) * a[:, :, 0, 1:].mean(1)
            z = blk(z)
        got = tiny.forward_ee(images).gca
    assert start == 1 and got.shape == (6, 4, 4)
    assert torch.allclose(got.flatten(1), g, atol=1e-6, rtol=1e-4)


def test_sac_loss_is_ce_plus_scaled_kl_from_sac_to_ee():
    """KL(p_sac ‖ p_ee) (not the reverse), weighted λ·τ², with no KL gradient into the SAC logits."""
    torch.manual_seed(3)
    ee, sac = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss = sac_loss(ee, sac, y, kl_weight=0.7, kl_tau=2.0)
    p_sac, log_p_ee = (sac / 2).softmax(-1), (ee / 2).log_softmax(-1)
    kl = (p_sac * (p_sac.log() - log_p_ee)).sum(-1).mean()
    reverse = (log_p_ee.exp() * (log_p_ee - p_sac.log())).sum(-1).mean()
    expected = F.cross_entropy(sac, y) + 0.7 * 4.0 * kl
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(kl, reverse, atol=1e-3)  # the direction is tested, not assumed
    loss.backward()
    sac_grad = torch.autograd.grad(F.cross_entropy(sac, y), sac)[0]
    assert torch.allclose(sac.grad, sac_grad, atol=1e-7)  # stop-gradient: SAC sees only the CE
    assert ee.grad.abs().sum() > 0
    without_kl = sac_loss(ee, sac, y, kl_weight=0)
    assert torch.allclose(without_kl, F.cross_entropy(sac, y))


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


def test_eval_forward_keeps_autograd_and_predict_does_not(tiny, images):
    x = images.clone().requires_grad_(True)
    with torch.no_grad():
        conf = tiny.forward_ee(images).logits.softmax(-1).amax(-1)
    tiny.sac_config.threshold = float(conf.median())  # some images exit, some go through SAC
    out = tiny(x)
    assert out.requires_grad
    out[:, 0].sum().backward()
    pred = tiny.predict(images)
    assert 0 < pred.stage.sum() < 6 and not pred.logits.requires_grad
    assert torch.allclose(out.detach(), pred.logits, atol=1e-6)
    # every image's gradient flows, through the stage it ended in
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    with torch.no_grad():
        assert not tiny(images).requires_grad


def test_predict_refuses_a_model_in_training_mode(tiny, images):
    tiny.train()
    with pytest.raises(RuntimeError, match="eval"):
        tiny.predict(images)


def test_bf16_model_predicts_on_cpu(tiny, images):
    ref = tiny.predict(images, 2.0)
    half = tiny.to(torch.bfloat16)
    got = half.predict(images.to(torch.bfloat16), 2.0)
    assert got.logits.dtype == torch.bfloat16 and torch.isfinite(got.logits.float()).all()
    assert (got.logits.float() - ref.logits).abs().max() < 0.15  # bf16 keeps ~3 significant digits


def test_every_parameter_gets_a_gradient(images):
    model = make_tiny(cluster_mode="adaptive", adaptive_sizes=(2, 3), rho=0.5).train()
    torch.nn.init.zeros_(model.reuse.mlp.fc2.weight)  # the real zero init: fc1 only learns after a step
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.arange(6) % 5
    for step in range(2):
        opt.zero_grad()
        logits_ee, logits_sac = model(images)
        loss = sac_loss(logits_ee, logits_sac, y)
        loss.backward()
        if step == 0:
            opt.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_training_warmup_is_a_full_resolution_pass(images):
    """``full_window=True`` (selection warm-up): the SAC stage is the plain ViT at full resolution
    (reuse at its zero init), while the windowed pass differs."""
    torch.manual_seed(0)
    model = SACViT(sac=SACConfig(window=3, gca_start=1), **TINY).train()  # fc2 zero-initialised
    ref = _plain(model, 32)
    ee, full = model(images, full_window=True)
    _, windowed = model(images)
    assert (full - ref(images)).abs().max() < 1e-5
    assert (windowed - full).abs().max() > 1e-3
    assert (ee - ref.__class__.forward(_plain(model, 16), F.interpolate(
        images, size=(16, 16), mode="bilinear", antialias=True))).abs().max() < 1e-5


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
