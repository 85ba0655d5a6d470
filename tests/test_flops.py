import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from sacvit import flops
from sacvit.flops import measure_macs

from conftest import make_tiny


def test_closed_form_vit_formula_by_hand():
    # DeiT-S: 12 blocks × (12·N·D² + 2·N²·D) + patch embed + head, N = 197, D = 384
    n, d = 197, 384
    by_hand = 12 * (12 * n * d * d + 2 * n * n * d) + 196 * 3 * 16 * 16 * d + d * 1000
    assert flops.vit_macs(14, 16, d, 12, 1000) == by_hand


def test_deit_small_reads_4_6_and_1_1_gmacs():
    model = timm.create_model("deit_small_patch16_224").eval()
    measured = measure_macs(lambda: model(torch.randn(1, 3, 224, 224))) / 1e9
    assert round(measured, 1) == 4.6
    assert abs(measured - flops.vit_macs(14, 16, 384, 12, 1000) / 1e9) < 1e-3
    assert round(flops.vit_macs(7, 16, 384, 12, 1000) / 1e9, 1) == 1.1


def test_plain_counter_misses_cpu_sdpa_and_ours_does_not():
    model = timm.create_model("deit_tiny_patch16_224", depth=2).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(x)
    ours = measure_macs(lambda: model(x))
    attention = 2 * (2 * 197 * 197 * 192)  # 2 blocks × 2·N²·D
    assert ours - plain.get_total_flops() // 2 == attention


def test_sacvit_stages_closed_form_matches_measurement():
    model = make_tiny()
    x = torch.randn(1, 3, 32, 32)
    ee = model.forward_ee(x)
    clusters = model.policy.cluster(ee.gca, 3)
    checks = {
        "ee": (model.gmacs_ee(), lambda: model.forward_ee(x)),
        "sac": (model.gmacs_sac(clusters.num_target, clusters.num_non_target),
                lambda: model.forward_sac(x, ee, clusters)),
        "full": (model.gmacs_full(), lambda: model.forward_backbone(x)),
    }
    for name, (closed, run) in checks.items():
        measured = measure_macs(run) / 1e9
        assert abs(measured - closed) <= 0.01 * closed, (name, measured, closed)


def test_predict_gmacs_match_measurement_for_full_sac():
    model = make_tiny()
    x = torch.randn(1, 3, 32, 32)
    pred = model.predict(x, threshold=2.0)
    measured = measure_macs(lambda: model.predict(x, threshold=2.0)) / 1e9
    assert abs(pred.gmacs.item() - measured) <= 0.01 * measured


def test_deit_small_sacvit_gmacs():
    model = timm.create_model("sacvit_deit_small_patch16_224", depth=12)
    assert round(model.gmacs_ee(), 1) == 1.1
    assert 2.7 < model.gmacs_sac(100, 24) < 2.9
    assert round(model.gmacs_full(), 1) == 4.6
