import pytest
import timm
import torch
from safetensors.torch import save_file

import sacvit


@pytest.fixture(scope="module")
def deit_tiny_files(tmp_path_factory):
    """A 2-block DeiT-Tiny (timm, random weights) saved the three ways users have it."""
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", depth=2).eval()
    d = tmp_path_factory.mktemp("ckpt")
    state = deit.state_dict()
    torch.save(state, d / "timm.pth")
    torch.save({"model": state, "epoch": 299}, d / "facebook.pth")
    save_file(state, str(d / "timm.safetensors"))
    return deit, d


@pytest.mark.parametrize("fname", ["timm.pth", "facebook.pth", "timm.safetensors"])
def test_deit_checkpoint_loads_unchanged(deit_tiny_files, fname):
    deit, d = deit_tiny_files
    model = sacvit.create_model("sacvit_deit_tiny_patch16_224", checkpoint=str(d / fname), depth=2).eval()
    for k, v in deit.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.forward_backbone(x), deit(x))


def test_timm_pretrained_cfg_overlay_file(deit_tiny_files):
    deit, d = deit_tiny_files
    model = timm.create_model("sacvit_deit_tiny_patch16_224", pretrained=True, depth=2,
                              pretrained_cfg_overlay=dict(file=str(d / "timm.safetensors")))
    assert torch.equal(model.blocks[1].mlp.fc2.weight, deit.blocks[1].mlp.fc2.weight)


def test_deit_224_checkpoint_into_288_variant(deit_tiny_files):
    _, d = deit_tiny_files
    model = timm.create_model("sacvit_deit_small_patch16_288", embed_dim=192, num_heads=3, depth=2,
                              checkpoint=str(d / "timm.pth"))
    assert model.pos_embed.shape == (1, 1 + 18 * 18, 192)


def test_width_mismatch_is_a_clear_error(deit_tiny_files):
    _, d = deit_tiny_files
    path = str(d / "timm.pth")
    with pytest.raises(ValueError, match=r"width 192 does not match.*384") as err:
        sacvit.create_model("sacvit_deit_small_patch16_224", checkpoint=path, depth=2)
    assert path in str(err.value)


def test_other_model_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="not a ViT checkpoint"):
        sacvit.create_model("sacvit_deit_tiny_patch16_224", checkpoint=str(path), depth=2)


def test_corrupt_and_missing_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        sacvit.create_model("sacvit_deit_tiny_patch16_224", checkpoint=str(bad), depth=2)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        sacvit.create_model("sacvit_deit_tiny_patch16_224", checkpoint=str(tmp_path / "nope.pth"), depth=2)


def test_pretrained_without_file_never_downloads():
    with pytest.raises(ValueError, match="never downloads"):
        timm.create_model("sacvit_deit_tiny_patch16_224", pretrained=True, depth=1)


def test_head_of_other_class_count_is_reinitialised(deit_tiny_files):
    deit, d = deit_tiny_files
    torch.manual_seed(5)
    model = sacvit.create_model("sacvit_deit_tiny_patch16_224", checkpoint=str(d / "timm.pth"),
                                depth=2, num_classes=10).eval()
    assert model.head.weight.shape == (10, 192)
    # the backbone is DeiT's, the 10-class head is freshly initialised: the features agree
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(timm.models.VisionTransformer.forward_features(model, x), deit.forward_features(x))


def test_timm_create_model_restores_a_trained_checkpoints_sac_config(tmp_path):
    """The checkpoint is the truth about how to run it: timm loading restores window and η, or refuses."""
    import sacvit
    from deploy_helpers import KW, NAME, save_tiny
    from sacvit.io.checkpoint import update_metadata

    ckpt = save_tiny(tmp_path / "last.safetensors")
    update_metadata(ckpt, threshold=0.451)
    ref = sacvit.from_pretrained(ckpt).model
    for kwargs in (dict(checkpoint=str(ckpt)), dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)))):
        model = timm.create_model(NAME, **KW, **kwargs).eval()
        assert model.sac_config == ref.sac_config and model.sac_config.window == 3 and model.sac_config.threshold == 0.451
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(model.predict(x).logits, ref.predict(x).logits)
    same = timm.create_model(NAME, **KW, checkpoint=str(ckpt), sac={"window": 3})  # repeating it is fine
    assert same.sac_config == ref.sac_config
    with pytest.raises(ValueError, match="from_pretrained") as err:
        timm.create_model(NAME, **KW, checkpoint=str(ckpt), sac={"window": 2})
    assert "window: stored 3, asked 2" in str(err.value)
