"""DVT: the cascade of timm ViTs (sacvit.model.dvt), its real exit, accounting and registration."""

from __future__ import annotations

import itertools
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

from sacvit import timm_ops  # importing sacvit registers the models
from sacvit.config import ConfigTypeError, DVTConfig
from sacvit.engine.loss import cascade_loss, cross_entropy
from sacvit.flops import measure_macs
from sacvit.model.dvt import DVT

TINY = dict(img_size=56, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)
GRIDS = (7, 10, 14)


def _tiny(**dvt) -> DVT:
    torch.manual_seed(0)
    return DVT(dvt=dict(grids=GRIDS, **dvt), **TINY).eval()


def _x(b: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def _wake(model: DVT, head_std: float | None = 2.0) -> DVT:
    """Random (non-zero) reuse layers and spread-out confidences, so reuse and exit are visible."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "reuse" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("head.weight") and head_std is not None:
                p.copy_(torch.randn(p.shape, generator=g) * head_std)
    return model


def test_config_validates_and_round_trips():
    cfg = DVTConfig(grids=[5, 8], threshold=0.5)
    assert cfg.grids == (5, 8) and DVTConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(grids=(7,)), dict(grids=(10, 7)), dict(threshold=-0.1), dict(reuse_mlp_ratio=0)):
        with pytest.raises(ValueError):
            DVTConfig(**bad)
    with pytest.raises(ConfigTypeError):
        DVTConfig(feature_reuse="yes")
    with pytest.raises(ValueError, match="unknown"):
        DVTConfig.from_dict({"thresholds": [0.5, 0.6]})


def test_img_size_must_be_the_last_grid():
    with pytest.raises(ValueError, match="img_size"):
        DVT(dvt=dict(grids=(7, 10)), **TINY)  # 10 × 4 = 40 px, not 56


OPTIONS = [dict(qk_norm=q, init_values=i, scale_attn_norm=a)
           for q, i, a in itertools.product((False, True), (None, 1e-5), (False, True))]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_block_with_logits_equals_timm_block(options):
    torch.manual_seed(0)
    blk = Block(32, 2, qkv_bias=True, **options).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the init (layer scale 1e-5, unit norms …), so a skipped part shows
        for p in blk.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        ref = blk(x)
        for want in (True, False):
            y, logits = timm_ops.block_forward_with_logits(blk, x, None, want)
            assert torch.allclose(y, ref, atol=1e-5)
            assert (logits is not None) == want
        y0, _ = timm_ops.block_forward_with_logits(blk, x, torch.zeros(3, 2, 17, 17), True)
        assert torch.allclose(y0, ref, atol=1e-5)
        # a bias changes the result, identically on the explicit and the SDPA path
        bias = torch.randn(3, 2, 17, 17)
        ya, la = timm_ops.block_forward_with_logits(blk, x, bias, True)
        yb, _ = timm_ops.block_forward_with_logits(blk, x, bias, False)
        assert not torch.allclose(ya, ref, atol=1e-3) and torch.allclose(ya, yb, atol=1e-5)
        q, k, _ = timm_ops.qkv(blk, x)
        assert torch.allclose(la, q @ k.transpose(-2, -1) * blk.attn.scale + bias, atol=1e-5)


def test_untrained_stages_equal_plain_vits_on_the_resized_image():
    model = _tiny()
    x = _x()
    outs = model._all_stages(x)
    for i, g in enumerate(GRIDS):
        side = g * 4
        vit = VisionTransformer(**{**TINY, "img_size": side})
        vit.load_state_dict(model.stages[i].state_dict())
        vit.eval()
        img = x if side == 56 else F.interpolate(x, size=(side, side), mode="bilinear", antialias=True,
                                                 align_corners=False)
        assert torch.allclose(outs[i].logits, vit(img), atol=1e-5), f"stage {i}"
    # with live reuse layers the later stages differ from the plain ViT, stage 0 does not
    _wake(model, head_std=None)
    woke = model._all_stages(x)
    assert torch.allclose(woke[0].logits, outs[0].logits, atol=1e-6)
    assert not torch.allclose(woke[2].logits, outs[2].logits, atol=1e-4)


def test_threshold_zero_exits_everything_at_stage_zero():
    model = _wake(_tiny())
    x = _x()
    p = model.predict(x, 0.0)
    first = model.predict_stages(x)[0]
    assert (p.stage == 0).all() and torch.allclose(p.logits, first.logits, atol=1e-5)
    assert torch.allclose(p.gmacs, torch.full_like(p.gmacs, model.gmacs_stage(0)))
    assert (p.box == -1).all() and p.box.shape == (6, 4) and p.box.dtype == torch.long


def test_threshold_above_one_runs_every_image_through_the_last_stage():
    model = _wake(_tiny())
    x = _x()
    p = model.predict(x, 1.5)
    stages = model.predict_stages(x)
    assert (p.stage == 2).all()
    assert torch.allclose(p.logits, stages[-1].logits, atol=1e-5)
    assert torch.allclose(p.gmacs, torch.full_like(p.gmacs, model.gmacs_full()), rtol=1e-6)
    assert torch.allclose(p.confidence, stages[0].confidence)


def test_real_exit_equals_the_sweep_of_predict_stages():
    model = _wake(_tiny())
    x = _x(12)
    stages = model.predict_stages(x)
    c0, c1 = stages[0].confidence, stages[1].confidence
    eta = float(c0.median())
    expected = torch.where(c0 >= eta, 0, torch.where(c1 >= eta, 1, 2))
    assert set(expected.tolist()) == {0, 1, 2}, "the test needs images at every stage"
    p = model.predict(x, eta)
    assert torch.equal(p.stage, expected)
    for i in range(3):
        rows = expected == i
        assert torch.allclose(p.logits[rows], stages[i].logits[rows], atol=1e-5)
        assert torch.allclose(p.gmacs[rows], stages[i].gmacs[rows], rtol=1e-6)
    assert torch.allclose(p.confidence, c0)
    # eval forward = predict's logits at the configured threshold
    model.dvt_cfg.threshold = eta
    assert torch.allclose(model(x), p.logits, atol=1e-6)


def test_training_forward_gives_every_stage_and_trains_the_reuse():
    model = _tiny().train()
    x = _x(4)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == len(GRIDS) and all(o.shape == (4, 5) for o in out)
    target = torch.tensor([0, 1, 2, 3])
    loss = cascade_loss(out, target)
    assert torch.allclose(loss, sum(cross_entropy(o, target) for o in out))
    loss.backward()
    for name in ("feature_reuse.0.mlp.fc2.weight", "feature_reuse.1.mlp.fc2.weight",
                 "relation_reuse.0.map.weight", "relation_reuse.1.map.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    with pytest.raises(RuntimeError):
        model.predict(x)


def test_reuse_switches_remove_the_layers():
    model = _tiny(feature_reuse=False, relation_reuse=False)
    assert model.feature_reuse is None and model.relation_reuse is None
    assert not any("reuse" in k for k in model.state_dict())
    assert model.gmacs_stage(1) < _tiny().gmacs_stage(1)


@pytest.mark.parametrize("reuse", [True, False])
def test_closed_form_gmacs_match_the_measurement(reuse):
    model = _tiny(feature_reuse=reuse, relation_reuse=reuse)
    x = _x(2)
    for eta, expected in ((0.0, model.gmacs_stage(0)), (2.0, model.gmacs_full())):
        measured = measure_macs(lambda: model.predict(x, eta)) / 2 / 1e9
        assert measured == pytest.approx(expected, rel=0.01)
    outs = []
    for i in range(3):
        up = outs[-1] if outs else None
        measured = measure_macs(lambda: outs.append(model.forward_stage(i, x, up))) / 2 / 1e9
        assert measured == pytest.approx(model.gmacs_stage(i), rel=0.01), f"stage {i}"


def test_registered_variants_and_deit_checkpoint_in_every_stage(tmp_path):
    assert {"dvt_demo_patch8_112", "dvt_deit_small_patch16_224"} <= set(timm.list_models("dvt*"))
    torch.manual_seed(5)
    deit = timm.create_model("deit_demo_patch8_112")  # a DeiT-like 112-px ViT, 14×14 tokens
    path = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), path)
    model = timm.create_model("dvt_demo_patch8_112", checkpoint=str(path), dvt={"threshold": 0.5})
    assert isinstance(model, DVT) and model.dvt_cfg.threshold == 0.5 and model.dvt_cfg.grids == GRIDS
    assert model.patch_embed.img_size == (112, 112) and model.num_classes == 10
    assert model.pretrained_cfg["architecture"] == "dvt_demo_patch8_112" and model.default_cfg is not None
    ref = deit.state_dict()
    for i, stage in enumerate(model.stages):
        own = stage.state_dict()
        assert torch.equal(own["blocks.1.mlp.fc1.weight"], ref["blocks.1.mlp.fc1.weight"]), f"stage {i}"
        assert own["pos_embed"].shape == (1, 1 + GRIDS[i] ** 2, 64)
    assert torch.equal(model.stages[2].pos_embed, deit.pos_embed)  # the full grid: unchanged
    assert (model.feature_reuse[0].mlp.fc2.weight == 0).all()  # reuse at its zero init
    # the last stage is the DeiT itself (zero reuse adds nothing)
    model.eval()
    x = torch.randn(2, 3, 112, 112)
    assert torch.allclose(model.predict_stages(x)[-1].logits, deit.eval()(x), atol=1e-5)
    # bench's path: a state dict already in memory
    other = timm.create_model("dvt_demo_patch8_112")
    other.load_backbone_state(deit.state_dict())
    assert torch.equal(other.stages[0].pos_embed, model.stages[0].pos_embed)
    # a trained DVT's own weights load whole
    torch.save(model.state_dict(), tmp_path / "dvt.pth")
    again = timm.create_model("dvt_demo_patch8_112", checkpoint=str(tmp_path / "dvt.pth"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    dvt_s = DVTConfig(**{**DVTConfig().to_dict(), "threshold": 0.9})
    assert timm.create_model("dvt_deit_small_patch16_224", depth=1, dvt=dvt_s).dvt_cfg is dvt_s


@pytest.mark.parametrize("bad", ["nan", "inf", "shape", "channels"])
def test_bad_input_raises_value_error(bad):
    model = _tiny()
    x = _x(3)
    if bad == "nan":
        x[1, 0, 2, 2] = float("nan")
    elif bad == "inf":
        x[2, 1, 0, 0] = float("inf")
    elif bad == "shape":
        x = x[:, :, :48, :48]
    else:
        x = x[:, :2]
    calls = (lambda: model.predict(x), lambda: model.predict(x, 0.0), lambda: model.predict_stages(x), lambda: model(x))
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_relation_bias_leaves_the_cls_row_and_column_alone(monkeypatch):
    model = _wake(_tiny(feature_reuse=False))
    seen = []
    original = timm_ops.block_forward_with_logits

    def spy(blk, x, bias=None, want=True):
        seen.append(bias)
        return original(blk, x, bias, want)

    monkeypatch.setattr(timm_ops, "block_forward_with_logits", spy)
    outs = model._all_stages(_x(2))
    assert seen[:2] == [None, None]  # stage 0: no upstream
    assert outs[0].relations.shape == (2, 2 * 2, 49, 49) and outs[2].relations is None
    for i, b in enumerate(seen[2:]):
        n = 1 + GRIDS[1 + i // 2] ** 2
        assert b.shape == (2, 2, n, n)
        assert (b[..., 0, :] == 0).all() and (b[..., :, 0] == 0).all()
        assert b[..., 1:, 1:].abs().amin() > 0


def test_train_calibrate_and_reload_a_dvt(tmp_path):
    """`sacvit train` trains every exit (cascade_loss), records the cascade's configuration, and a
    certified calibration stores η in it; from_pretrained and load_checkpoint rebuild the cascade."""
    import sacvit
    from sacvit.engine.calibrate import calibrate
    from sacvit.engine.train import TrainConfig, train
    from sacvit.io.checkpoint import load_checkpoint, read_metadata

    kw = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, dvt={"grids": [4, 6, 8]})
    cfg = TrainConfig(model="dvt_demo_patch8_112", model_kwargs=kw, data="synthetic", train_length=64,
                      val_length=32, epochs=1, batch_size=16, lr=2e-3, warmup_epochs=0.5, drop_path=0.0,
                      out_dir=str(tmp_path / "run"), threads=1)
    ckpt = train(cfg)
    meta = read_metadata(ckpt)
    assert meta.model_kwargs["dvt"]["grids"] == [4, 6, 8] and meta.threshold == 0.76 and meta.sac_config is None
    metrics = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"val_top1_stage0", "val_top1_stage1", "val_top1_stage2"} <= set(metrics[-1])
    model, _ = load_checkpoint(ckpt)
    assert isinstance(model, DVT) and model.grids == (4, 6, 8)
    result = calibrate(ckpt, data="synthetic", split="holdout", length=64, max_drop=50.0)
    assert result.curve is None and result.choice.certified  # ε = 50 pt: something is certified
    assert read_metadata(ckpt).threshold == result.choice.threshold == sacvit.from_pretrained(ckpt).threshold
    with pytest.raises(ValueError, match="accuracy budget"):
        calibrate(ckpt, data="synthetic", split="holdout", length=64, exit_share=0.5)
