"""The timm contract: what timm's ViT offers works on SAC-ViT too, or refuses clearly; and the
forward passes make no hidden host synchronisations (GPU readiness, checked on CPU)."""

import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock
from torch.utils._python_dispatch import TorchDispatchMode

import sacvit
from sacvit import SACConfig, SACViT

from conftest import TINY, make_tiny

VARIANTS = [n for n in timm.list_models("sacvit_*")] + ["deit_demo_patch8_112"]


def test_every_variant_is_registered():
    assert set(VARIANTS) >= {"sacvit_deit_tiny_patch16_224", "sacvit_deit_small_patch16_224",
                             "sacvit_deit_base_patch16_224", "sacvit_deit_small_patch16_288",
                             "sacvit_demo_patch8_112", "deit_demo_patch8_112"}


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_features_only_and_forward_intermediates(name):
    """As timm's own model tests do: the feature wrapper's channels, reductions and shapes."""
    model = timm.create_model(name, features_only=True).eval()
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model(x)
    info = model.feature_info
    assert len(feats) == len(info.channels()) == 3
    for f, ch, red in zip(feats, info.channels(), info.reduction()):
        assert f.shape == (1, ch, size // red, size // red)
    full = timm.create_model(name).eval()
    with torch.no_grad():
        final, inter = full.forward_intermediates(x, indices=2)
        plain = timm.models.VisionTransformer.forward_features(full, x)
    assert len(inter) == 2 and inter[-1].shape[-1] == size // full.patch_embed.patch_size[0]
    assert torch.allclose(final, plain, atol=1e-5)


def test_features_only_with_a_local_checkpoint(tmp_path):
    deit = timm.create_model("deit_demo_patch8_112").eval()
    path = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), path)
    feats = timm.create_model("sacvit_demo_patch8_112", features_only=True, out_indices=(1, 3),
                              checkpoint=str(path)).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        _, expected = deit.forward_intermediates(x, indices=(1, 3))
        got = feats(x)
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))


def test_set_input_size_updates_the_ee_grid():
    model = make_tiny()
    model.set_input_size(img_size=48)  # 12×12 grid → 6×6 EE grid
    assert model.ee_grid == (6, 6) and tuple(model.patch_embed.img_size) == (48, 48)
    assert model.pos_embed.shape[1] == 1 + 144
    pred = model.predict(torch.randn(3, 3, 48, 48), 2.0)
    assert pred.logits.shape == (3, 5) and (pred.box[:, 2:] <= 48).all()
    assert pred.gmacs[0].item() == pytest.approx(model.gmacs_ee() + model.gmacs_sac(36, 36 - 9))
    assert model.gmacs_ee() > make_tiny().gmacs_ee()
    demo = timm.create_model("sacvit_demo_patch8_112").eval()
    demo.set_input_size(img_size=128)
    assert demo._traits["img_size"] == (128, 128) and demo.ee_grid == (8, 8)  # recorded as timm records it
    assert demo.predict(torch.randn(1, 3, 128, 128), 2.0).box[0, 2:].max() <= 128


@pytest.mark.parametrize("size, match", [(30, "not divisible by the patch size"),
                                         (36, "not divisible by ee_scale"),
                                         (16, "does not fit")])
def test_set_input_size_refuses_and_changes_nothing(size, match):
    model = make_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        model.set_input_size(img_size=size)
    assert model.ee_grid == (4, 4) and tuple(model.patch_embed.img_size) == (32, 32)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.predict(torch.randn(1, 3, 32, 32))


def _saved_bytes(model, x):
    """Bytes autograd saves for the backward pass of one training forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ee, sac = model(x)
    return total, (ee.sum() + sac.sum())


def test_grad_checkpointing_checkpoints_both_stages(images):
    model = make_tiny().train()
    plain_bytes, loss = _saved_bytes(model, images)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    ckpt_bytes, loss = _saved_bytes(model, images)
    loss.backward()
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n
    with torch.no_grad():  # only in training with gradients; inference is unchanged
        assert model.eval().predict(images, 2.0).logits.shape == (6, 5)


def test_reset_classifier_and_no_classifier(images):
    model = make_tiny()
    model.reset_classifier(7)
    assert model.predict(images).logits.shape == (6, 7)
    with pytest.raises(ValueError, match="token"):
        model.reset_classifier(7, global_pool="avg")


@pytest.mark.parametrize("mode", ["window", "adaptive"])
def test_num_classes_zero_gives_features_in_both_clustering_modes(images, mode):
    sac = {"cluster_mode": mode, "adaptive_sizes": (2, 3, 4), "rho": 0.5}
    model = make_tiny(**sac)
    model.reset_classifier(0)
    feats = model(images)
    assert feats.shape == (6, 32)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.predict(images)
    ee, sac_feats = model.train()(images)
    assert ee.shape == sac_feats.shape == (6, 32)
    fresh = SACViT(sac=SACConfig(window=3, gca_start=1, **sac), **{**TINY, "num_classes": 0}).eval()
    assert fresh(images).shape == (6, 32)


def test_pretrained_cfg_describes_the_preprocessing():
    model = timm.create_model("sacvit_demo_patch8_112")
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 112, 112) and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["crop_pct"] == 1.0
    deit = timm.create_model("sacvit_deit_small_patch16_224").pretrained_cfg
    assert deit["num_classes"] == 1000 and deit["first_conv"] == "patch_embed.proj" and deit["classifier"] == "head"


def test_construction_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        timm.create_model("sacvit_demo_patch8_112", img_size=116)
    with pytest.raises(ValueError, match="gca_start=4 must be below the depth 4"):
        timm.create_model("sacvit_demo_patch8_112", sac={"gca_start": 4})
    with pytest.raises(ValueError, match="standard Block"):
        SACViT(block_fn=ResPostBlock, **TINY)
    with pytest.raises(ValueError, match="class token"):
        SACViT(class_token=False, global_pool="avg", **TINY)


def test_gca_start_default_is_the_same_for_dict_and_config():
    a = timm.create_model("sacvit_demo_patch8_112", sac={"window": 4})
    b = timm.create_model("sacvit_demo_patch8_112", sac=SACConfig(window=4))
    c = timm.create_model("sacvit_deit_small_patch16_224", depth=12)
    assert a.gca_start == b.gca_start == 1 and c.gca_start == 3


class _HostSyncs(TorchDispatchMode):
    """Counts the ops that read device data on the host or copy host data to the device."""

    SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.equal",
               "aten.masked_select", "aten.unique", "aten.lift_fresh")

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(self.SYNCING):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_forward_passes_make_no_host_sync_but_the_exit_decision(images):
    model = make_tiny()
    with _HostSyncs() as rec:  # training forward: none at all (window mode)
        model.train()(images)
        model(images, full_window=True)
    assert rec.calls == []
    model.eval()
    with torch.no_grad():
        threshold = float(model.forward_ee(images).logits.softmax(-1).amax(-1).median())
    with _HostSyncs() as rec:  # predict: exactly one, the exit decision (NaN check folded in)
        pred = model.predict(images, threshold)
    assert 0 < pred.stage.sum() < 6
    assert rec.calls == ["aten.nonzero.default"]
    with _HostSyncs() as rec:
        model.forward_ee(images)
        model.predict_stages(images)
    assert rec.calls.count("aten.nonzero.default") == 0 and "aten.lift_fresh.default" not in rec.calls


def test_the_training_input_check_is_optional(images):
    model = make_tiny().train()
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    model(bad)  # off by default: no host sync per step
    model.finite_check_in_training = True
    with pytest.raises(ValueError, match="NaN"):
        model(bad)
    assert isinstance(sacvit.SACViT, type)


def test_forward_features_and_head_are_the_sac_stage():
    """timm's contract ``forward_head(forward_features(x))`` means the SAC-only computation,
    tokens CLS first; the plain backbone is ``forward_backbone``; adaptive mode and masks refuse."""
    model = make_tiny().eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats = model.forward_features(x)
        t, m = model.policy.counts()
        assert feats.shape == (3, 1 + t + m, model.embed_dim)
        assert torch.allclose(model.forward_head(feats), model.predict(x, 2.0).logits, atol=1e-5)
        assert torch.allclose(model.forward_head(feats), model(x) if model.sac_config.threshold > 1 else
                              model.predict(x, 1.01).logits, atol=1e-5)
        assert not torch.allclose(model.forward_head(feats), model.forward_backbone(x), atol=1e-3)
    with pytest.raises(ValueError, match="attn_mask"):
        model.forward_features(x, attn_mask=torch.ones(1, 1))
    with pytest.raises(ValueError, match="adaptive"):
        make_tiny(cluster_mode="adaptive", adaptive_sizes=(2, 3)).forward_features(x)
