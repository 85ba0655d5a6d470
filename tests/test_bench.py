"""``sacvit bench`` and the fast inference path it measures (no speed targets here: timings on a
shared CI machine are noise; these tests check that the harness measures the right things)."""

import csv
import json
import math
from pathlib import Path

import pytest
import timm
import torch

import sacvit.cli
from sacvit import bench, flops
from sacvit.bench import profile as bench_profile
from sacvit.model.attention import cluster_block

from conftest import make_tiny, write_fake_fmnist


def bench_main(argv: list[str]) -> int:
    return sacvit.cli.main(["bench", *argv])

TINY_CLI = ["--model", "sacvit_demo_patch8_112", "--depth", "2", "--embed-dim", "32", "--num-heads", "2",
            "--batch", "4", "--repeats", "2", "--warmup", "1", "--latency-repeats", "2", "--threads", "1"]


def tiny_bench(*argv: str) -> int:
    """``sacvit bench`` on the tiny config, leaving torch's thread count as it was."""
    threads = torch.get_num_threads()
    try:
        return bench_main([*TINY_CLI, *argv])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One end-to-end bench run on a tiny config, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("bench")
    assert tiny_bench("--exit-share", "0.5,1", "--tome-r", "4,8", "--evit-keep", "0.7", "--out", str(out)) == 0
    return out


def _csv(out: Path) -> list[dict[str, str]]:
    with open(out / "bench.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == bench.COLUMNS
        return list(reader)


def test_bench_end_to_end_writes_rows_and_columns(tiny_run):
    rows = _csv(tiny_run)
    assert [(r["method"], r["setting"].split(" (")[0]) for r in rows] == [
        ("deit", "full 112px"), ("deit-ee", "EE 56px"), ("sacvit", "exit 0.5"), ("sacvit", "exit 1"),
        ("tome", "r=4"), ("tome", "r=8"), ("evit", "keep=0.7")]
    assert rows[0]["model"] == "deit_demo_patch8_112"
    for r in rows:
        for col in ("img_s", "lat_ms", "lat_p90_ms", "gmacs", "speedup", "flops_ratio", "realisation"):
            assert float(r[col]) > 0, (r["method"], col)
        assert float(r["lat_p90_ms"]) >= float(r["lat_ms"])
        speedup, ratio = float(r["speedup"]), float(r["flops_ratio"])
        assert math.isclose(float(r["realisation"]), speedup / ratio, rel_tol=1e-9)
        assert r["top1"] == ""  # no dataset given
    base = rows[0]
    assert float(base["speedup"]) == 1.0 and float(base["flops_ratio"]) == 1.0
    # closed-form GMACs: EE resolution has a quarter of the tokens; ToMe r=8 merges more than r=4
    assert float(rows[1]["gmacs"]) < float(base["gmacs"]) / 3
    assert float(rows[5]["gmacs"]) < float(rows[4]["gmacs"])
    doc = json.loads((tiny_run / "bench.json").read_text())
    assert doc["env"]["threads"] == 1 and doc["config"]["batch"] == 4
    assert [len(r["times_ms"]) for r in doc["rows"]] == [2] * 7
    assert [len(r["latencies_ms"]) for r in doc["rows"]] == [2] * 7
    assert (tiny_run / "bench.png").stat().st_size > 1000


def test_exit_share_is_realised_on_the_bench_batch(tiny_run):
    rows = {r["setting"].split(" (")[0]: r for r in _csv(tiny_run) if r["method"] == "sacvit"}
    assert float(rows["exit 0.5"]["exit_share"]) == 0.5
    assert float(rows["exit 1"]["exit_share"]) == 1.0
    # fewer GMACs when more images exit; all exit = the EE stage alone
    assert float(rows["exit 1"]["gmacs"]) < float(rows["exit 0.5"]["gmacs"])


@pytest.mark.parametrize("n", [1, 7, 64])
def test_exit_threshold_picks_the_quantile(n):
    conf = torch.rand(n, generator=torch.Generator().manual_seed(n))
    for share in (0.0, 0.1, 0.5, 0.77, 1.0):
        thr = bench.exit_threshold(conf, share)
        assert (conf >= thr).sum().item() == round(share * n), (n, share)
    with pytest.raises(ValueError, match="exit share"):
        bench.exit_threshold(conf, 1.5)


def test_exit_share_with_predict():
    model = make_tiny()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conf = model.forward_ee(x).logits.softmax(-1).amax(-1)
    pred = model.predict(x, bench.exit_threshold(conf, 0.5))
    assert (pred.stage == 0).sum().item() == 4


@pytest.mark.parametrize("sac", [{}, {"cluster_mode": "adaptive", "rho": 0.6, "adaptive_sizes": (2, 3, 4)}])
def test_compacted_batch_equals_sac_on_everything(sac):
    model = make_tiny(**sac)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ee = model.forward_ee(x)
        thr = bench.exit_threshold(ee.logits.softmax(-1).amax(-1), 0.5)
        mixed = model.predict(x, thr)
        every = model.predict(x, 2.0)
        sac_rows = mixed.stage == 1
        assert sac_rows.sum() == 4
        assert torch.allclose(mixed.logits[sac_rows], every.logits[sac_rows], atol=1e-5)
        assert torch.equal(mixed.logits[~sac_rows], ee.logits[~sac_rows])  # exited: the EE logits as is
        assert torch.equal(mixed.box[sac_rows], every.box[sac_rows])
        # the gather-by-row-index crop (no copy of the images) == cropping a compacted copy
        rest = sac_rows.nonzero().squeeze(1)
        sub = ee.index(rest)
        c = model.policy.cluster(sub.gca, 3)
        by_rows = model.forward_sac(x, sub, c, rows=rest)
        by_copy = model.forward_sac(x[rest].clone(), sub, c)
        assert torch.allclose(by_rows, by_copy, atol=1e-6)


def test_cluster_attention_equals_a_masked_block():
    """``[target, CLS, non-target]`` cluster attention == one block with the cluster mask."""
    model = make_tiny()
    blk = model.blocks[1]
    T, M = 9, 5
    x = torch.randn(3, T + 1 + M, 32, generator=torch.Generator().manual_seed(5))
    group = torch.tensor([1] * T + [0] + [2] * M)  # 0 = CLS
    allowed = (group[:, None] == group[None, :]) | (group[None, :] == 0) | (group[:, None] == 0)
    with torch.no_grad():
        got = cluster_block(blk, x, T)
        masked = blk(x, attn_mask=allowed)
        whole = cluster_block(blk, x[:, :T + 1], T)  # no non-target tokens: plain attention
        full = cluster_block(blk, x, T, within_clusters=False)  # the ablation: full attention
    assert (got - masked).abs().max() < 1e-5
    assert (whole - blk(x[:, :T + 1])).abs().max() < 1e-5
    assert (full - blk(x)).abs().max() < 1e-5
    assert (got - full).abs().max() > 1e-3  # the mask matters


def test_plain_twin_at_ee_resolution_equals_forward_ee():
    """The deit-ee row runs the same weights as SAC-ViT's EE stage."""
    model = timm.create_model("sacvit_demo_patch8_112", depth=2, embed_dim=32, num_heads=2).eval()
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(6))
    twin = bench.plain_twin(model, (56, 56), name="deit_demo_patch8_112", depth=2, embed_dim=32, num_heads=2)
    full = bench.plain_twin(model)
    with torch.no_grad():
        assert torch.allclose(twin(bench.twins.downsample(x, (56, 56))), model.forward_ee(x).logits, atol=1e-5)
        assert torch.allclose(full(x), model.forward_backbone(x), atol=1e-5)
    assert math.isclose(flops.vit_gmacs(full), model.gmacs_full(), rel_tol=1e-9)


def test_ee_pos_embed_cache_follows_the_weights():
    model = make_tiny()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a = model.forward_ee(x).logits
        assert torch.equal(model.forward_ee(x).logits, a)  # cached: same result
        model.pos_embed.add_(0.5)  # an in-place update (optimizer step) bumps the version
        b = model.forward_ee(x).logits
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["pos_embed"].normal_()
        model.load_state_dict(state)
        c = model.forward_ee(x).logits
        fresh = make_tiny()
        fresh.load_state_dict(state)
        expected = fresh.forward_ee(x).logits
    assert not torch.allclose(a, b) and not torch.allclose(b, c)
    assert torch.equal(c, expected)


def test_profile_parts_partition_the_instrumented_call(monkeypatch):
    """The laps cover the instrumented ``predict`` exactly, whatever the machine load: with a
    clock that ticks once per reading, every part gets its laps and they add up to the span."""
    torch.manual_seed(0)
    model = timm.create_model("sacvit_demo_patch8_112", depth=3, embed_dim=64, num_heads=2).eval()
    x = torch.randn(16, 3, 112, 112, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        thr = bench.exit_threshold(model.forward_ee(x).logits.softmax(-1).amax(-1), 0.5)
        expected = model.predict(x, thr)
    ticks = iter(range(10**6))
    monkeypatch.setattr(bench_profile.time, "perf_counter", lambda: float(next(ticks)))
    prof = bench.profile_parts(model, x, thr, repeats=3, warmup=1)
    assert tuple(prof.parts) == bench.PART_NAMES
    # one tick (1000 ms) per lap: one lap per part, and "head" also takes the scatter after predict
    assert prof.parts == {**dict.fromkeys(bench.PART_NAMES, 1000.0), "head": 2000.0}
    assert prof.total_ms == 1000.0  # the uninstrumented call: two readings
    assert prof.n_sac == 8
    # the instrumented call computes what predict computes
    assert torch.allclose(prof.prediction.logits, expected.logits, atol=1e-5)
    assert torch.equal(prof.prediction.stage, expected.stage)
    assert torch.allclose(prof.prediction.gmacs, expected.gmacs)
    assert "SAC blocks" in prof.table() and "overhead" in prof.table()


def test_help_explains_every_option_with_an_example(capsys):
    parser = sacvit.cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["bench"]
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 25
    for action in options:
        assert action.help and "e.g." in action.help, action.option_strings
    with pytest.raises(SystemExit):
        bench_main(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "realisation" in text and "--exit-share" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    if not torch.cuda.is_available():
        assert bench_main([*TINY_CLI, "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert bench_main([*TINY_CLI, "--exit-share", "1.5", "--methods", "deit,sacvit", "--out", str(tmp_path)]) == 2
    assert "exit share" in capsys.readouterr().err
    assert bench_main([*TINY_CLI, "--methods", "deit,bogus", "--out", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_bench_is_a_sacvit_command():
    args = sacvit.cli.build_parser().parse_args(["bench", "--batch", "8", "--exit-share", "0.5,0.77"])
    assert args.batch == 8 and args.exit_shares == [0.5, 0.77]


def test_checkpoints_and_dataset_give_top1(tmp_path):
    from sacvit.io import checkpoint
    data_dir = write_fake_fmnist(tmp_path / "fmnist")
    kw = dict(depth=1, embed_dim=32, num_heads=2, num_classes=10)
    sac = timm.create_model("sacvit_demo_patch8_112", **kw)
    plain = timm.create_model("deit_demo_patch8_112", **kw)
    from sacvit.data import FASHION_MNIST_CLASSES

    classes = list(FASHION_MNIST_CLASSES)  # the data's class names: bench compares them by name
    checkpoint.save_checkpoint(tmp_path / "sac.safetensors", sac, checkpoint.CheckpointMeta(
        model_name="sacvit_demo_patch8_112", model_kwargs=kw, sac_config=sac.sac_config, class_names=classes))
    checkpoint.save_checkpoint(tmp_path / "deit.safetensors", plain, checkpoint.CheckpointMeta(
        model_name="deit_demo_patch8_112", model_kwargs=kw, class_names=classes))
    out = tmp_path / "out"
    rc = bench_main(["--checkpoint", str(tmp_path / "sac.safetensors"),
                     "--baseline-checkpoint", str(tmp_path / "deit.safetensors"),
                     "--data", "cluttered-fmnist", "--data-dir", str(data_dir), "--limit", "12",
                     "--batch", "8", "--repeats", "1", "--warmup", "1", "--latency-repeats", "1",
                     "--thresholds", "0,2", "--methods", "deit,sacvit", "--threads", "1", "--out", str(out)])
    assert rc == 0
    rows = _csv(out)
    assert [r["method"] for r in rows] == ["deit", "sacvit", "sacvit"]
    for r in rows:
        assert r["n_eval"] == "12" and 0.0 <= float(r["top1"]) <= 1.0
    # η = 0: every image exits; η = 2: none does
    assert float(rows[1]["exit_share"]) == 1.0 and float(rows[2]["exit_share"]) == 0.0


def test_instrumented_predict_matches_predict_with_adaptive_buckets(monkeypatch):
    from sacvit.model.policy import ClusterPolicy

    model = make_tiny(cluster_mode="adaptive", rho=0.6, adaptive_sizes=(2, 3, 4))
    # random weights give every image the same window side: pick the side per image from its GCA
    monkeypatch.setattr(ClusterPolicy, "sides", lambda self, gca: 2 + gca.flatten(1).argmax(1) % 3)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        thr = bench.exit_threshold(model.forward_ee(x).logits.softmax(-1).amax(-1), 0.25)
        expected = model.predict(x, thr)
        assert len(set(expected.gmacs[expected.stage == 1].tolist())) > 1  # several window sizes
    clock = bench_profile._Clock(torch.device("cpu"))
    got = bench_profile._predict_instrumented(model, x, thr, clock)
    assert torch.allclose(got.logits, expected.logits, atol=1e-6)
    assert torch.equal(got.box, expected.box) and torch.allclose(got.gmacs, expected.gmacs)
    assert clock.parts["sac_blocks"] > 0


def test_crop_gathers_the_selected_patches_from_any_layout():
    """The run-gather crop (contiguous input) == the strided path (channels-last) == a reference."""
    model = make_tiny()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    rows = torch.tensor([4, 1, 5])
    index = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(i))[:20] for i in range(3)])
    p = model.patch_size
    ref = x[rows].reshape(3, 3, 8, p, 8, p).permute(0, 2, 4, 1, 3, 5).reshape(3, 64, -1)
    ref = torch.stack([ref[i, index[i]] for i in range(3)])
    proj = model.patch_embed.proj
    expected = torch.nn.functional.linear(ref, proj.weight.flatten(1), proj.bias)
    with torch.no_grad():
        got = model._embed_patches(x, index, rows)
        strided = model._embed_patches(x.to(memory_format=torch.channels_last), index, rows)
        pred = model.predict(x, 2.0)
        pred_cl = model.predict(x.to(memory_format=torch.channels_last), 2.0)
    assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(strided, expected, atol=1e-6)
    assert torch.allclose(pred.logits, pred_cl.logits, atol=1e-5)


@pytest.mark.slow
def test_ort_rows_have_the_eager_columns_and_their_own_baseline(tmp_path):
    assert tiny_bench("--methods", "deit,sacvit", "--exit-share", "0.5", "--runtime", "torch,ort",
                      "--out", str(tmp_path)) == 0
    rows = _csv(tmp_path)
    assert [(r["method"], r["runtime"]) for r in rows] == [("deit", "eager"), ("sacvit", "eager"), ("deit", "ort"),
                                                           ("sacvit", "ort")]
    eager, ort = rows[:2], rows[2:]
    assert float(ort[0]["speedup"]) == 1.0  # ratios against the DeiT row of the same runtime
    assert float(ort[1]["speedup"]) == pytest.approx(float(ort[1]["img_s"]) / float(ort[0]["img_s"]))
    for a, b in zip(eager, ort):  # same images, same exits, same GMACs
        assert a["gmacs"] == b["gmacs"] and a["exit_share"] == b["exit_share"] and float(b["lat_ms"]) > 0
    assert (tmp_path / "onnx" / "deit.onnx").is_file() and (tmp_path / "onnx" / "sacvit" / "sac.onnx").is_file()
