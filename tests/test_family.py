"""SAC-ViT's predecessors CF-ViT and LF-ViT: compositions of SACViT's parts, registered, really exiting."""

import pytest
import timm
import torch

import sacvit  # noqa: F401  (registers the variants)
from sacvit import SACConfig, SACViT
from sacvit.model.family import CFViT, LFViT
from sacvit.model.patches import gather_patches
from sacvit.model.stages import EEStage, SACStage, staged_predict, geometry

from conftest import TINY



def _make(cls, **sac):
    torch.manual_seed(0)
    window = {CFViT: 4, LFViT: 3, SACViT: 3}[cls]  # the tiny model's 4×4 EE grid
    return cls(sac={"window": window, **sac}, **TINY).eval()


def test_registry_lists_each_member_with_a_demo_variant():
    for prefix, cls in (("cfvit", CFViT), ("lfvit", LFViT)):
        names = timm.list_models(f"{prefix}*")
        assert f"{prefix}_demo_patch8_112" in names and f"{prefix}_deit_small_patch16_224" in names
        model = timm.create_model(f"{prefix}_demo_patch8_112")
        assert type(model) is cls and model.METHOD == prefix


def test_defaults_are_the_papers_selection_and_user_fields_override_one_by_one():
    cf = timm.create_model("cfvit_demo_patch8_112")
    assert (cf.sac_config.window, cf.sac_config.alpha, cf.sac_config.alpha_whole_grid, cf.sac_config.attention) == (7, 0.5, True, "full")
    assert cf.policy.counts() == (4 * 25, 49 - 25)  # 25 of 49 coarse tokens refined into 100 fine ones
    lf = timm.create_model("lfvit_demo_patch8_112", sac={"threshold": 0.5})
    assert (lf.sac_config.window, lf.sac_config.alpha, lf.sac_config.attention, lf.sac_config.threshold) == (5, 0.88, "full", 0.5)
    assert lf.policy.counts() == (4 * 22, 49 - 22)
    sac = timm.create_model("sacvit_demo_patch8_112")
    assert sac.sac_config == SACConfig()  # SAC-ViT's own defaults are untouched


def test_cfvit_selects_the_top_tokens_anywhere_on_the_grid_and_reembeds_their_2x2_patches():
    model = _make(CFViT)  # 4×4 EE grid, whole-grid window, α = 0.5: 8 coarse tokens refined
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ee = model.forward_ee(x)
        c = model.policy.cluster(ee.gca, 4)
        top = ee.gca.flatten(1).topk(8, dim=1).indices.sort(dim=1).values
        assert c.target.shape[1] == 4 * 8 and c.non_target.shape[1] == 16 - 8
        chosen = set(map(tuple, torch.stack([c.parent[b].unique() for b in range(2)]).tolist()))
        assert chosen == set(map(tuple, top.tolist()))
        # the fine tokens are the patch embedding of exactly the chosen patches (full resolution)
        fine = model._embed_patches(x, c.target)
        proj = model.patch_embed.proj
        ref = gather_patches(x, c.target, model.patch_size) @ proj.weight.flatten(1).T + proj.bias
        assert torch.allclose(fine, ref, atol=1e-5)


@pytest.mark.parametrize("cls", [CFViT, LFViT])
def test_ee_stage_is_timms_vit_and_real_exit_equals_the_sweep(cls):
    model = _make(cls)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain = timm.models.VisionTransformer(**{**TINY, "img_size": 16}).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("reuse.")}
    state["pos_embed"] = model._ee_pos_embed()
    plain.load_state_dict(state)
    with torch.no_grad():
        small = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
        ee, sac = model.predict_stages(x)
        assert torch.allclose(ee.logits, plain(small), atol=1e-5)
        eta = float(ee.confidence.median())
        pred = model.predict(x, eta)
        exited = ee.confidence >= eta
        assert 0 < int(exited.sum()) < 8
        assert torch.equal(pred.stage, (~exited).long())
        assert torch.allclose(pred.logits[exited], ee.logits[exited]) and torch.allclose(pred.logits[~exited], sac.logits[~exited], atol=1e-5)
        staged = staged_predict(EEStage(model), SACStage(model), x, eta, geometry(model))
        assert torch.allclose(staged.logits, pred.logits, atol=1e-5) and torch.equal(staged.stage, pred.stage)


def test_full_attention_differs_from_cluster_attention_on_the_same_selection():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    lf = _make(LFViT, window=3, alpha=1.0, reuse_non_target=True)
    sac = _make(SACViT, window=3)
    sac.load_state_dict(lf.state_dict())
    with torch.no_grad():
        assert not torch.allclose(lf.predict(x, 2.0).logits, sac.predict(x, 2.0).logits, atol=1e-4)
        assert torch.equal(lf.predict(x, 2.0).box, sac.predict(x, 2.0).box)  # same window, other attention


def test_bench_runs_the_family_with_real_exit_on_the_same_weights(tmp_path):
    import csv

    import sacvit.cli
    from sacvit.bench.run import BenchConfig, load_member

    threads = torch.get_num_threads()
    try:
        assert sacvit.cli.main(["bench", "--model", "sacvit_demo_patch8_112", "--depth", "2", "--embed-dim", "32",
                                "--num-heads", "2", "--batch", "4", "--repeats", "1", "--warmup", "0",
                                "--latency-repeats", "0", "--threads", "1", "--methods", "deit,sacvit,cfvit,lfvit",
                                "--exit-share", "0.5", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "bench.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"deit", "sacvit", "cfvit", "lfvit"}
    for m in ("sacvit", "cfvit", "lfvit"):
        assert float(rows[m]["exit_share"]) == 0.5  # each at its own η for the same share
        assert 0 < float(rows[m]["gmacs"]) < float(rows["deit"]["gmacs"])
    assert rows["cfvit"]["model"] == "cfvit_demo_patch8_112"
    sac = timm.create_model("sacvit_demo_patch8_112", depth=2, embed_dim=32, num_heads=2)
    cf, _ = load_member(BenchConfig(depth=2, embed_dim=32, num_heads=2), "cfvit", sac, "sacvit_demo_patch8_112",
                        torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(cf.state_dict().values(), sac.state_dict().values()))
    with pytest.raises(ValueError, match="no cfvit_deit_tiny_patch16_224 is registered"):
        load_member(BenchConfig(), "cfvit", sac, "sacvit_deit_tiny_patch16_224", torch.device("cpu"))
