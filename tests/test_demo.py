"""``sacvit demo`` end to end on a tiny config (seconds), and the protocol's guarantees."""

import json
from pathlib import Path

import numpy as np
import pytest

from sacvit.data import build_dataset
from sacvit.data.fashion_mnist import load_fashion_mnist
from sacvit.data.splits import pool_positions, pool_sources
from sacvit.demo import DemoConfig, Recipe, run_demo
from sacvit.io.checkpoint import load_checkpoint, read_metadata
from sacvit.engine.evaluate import plain_correct
from sacvit.demo.standin import StandinRecipe, make_standin, sha256, standin_path

from conftest import write_fake_fmnist

TINY = {"embed_dim": 16, "depth": 2, "num_heads": 2}
BUDGET = {"train_length": None, "epochs": 1, "holdout": None, "test": None, "bench_repeats": 1}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data = write_fake_fmnist(root / "fmnist")
    path = make_standin(root / "standin", StandinRecipe(epochs=2, optim=Recipe(batch_size=16)), data_dir=str(data),
                        model_kwargs=TINY, threads=1)
    return root, data, path


def _demo(out, data, standin, **kw):
    cfg = DemoConfig(out=str(out), data_dir=str(data), standin=str(standin), model_kwargs=TINY, threads=1,
                     recipe=Recipe(batch_size=16), overrides={**BUDGET, **kw.pop("overrides", {})}, tome_r=(2,),
                     evit_keep=(0.5,), **kw)
    return run_demo(cfg)


def test_standin_records_its_recipe_curve_and_hash(standin):
    _, _, path = standin
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == sha256(path) and standin_path(path) == path
    assert [r["epoch"] for r in record["curve"]] == [1, 2] and "val_top1" in record["curve"][-1]
    assert record["recipe"]["model"] == "deit_demo_patch8_112" and "sacvit standin" in record["command"]
    damaged = path.with_name("damaged.safetensors")
    damaged.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    damaged.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="does not match"):
        standin_path(damaged)
    with pytest.raises(FileNotFoundError, match="sacvit standin"):
        standin_path(path.with_name("nope.safetensors"))


@pytest.mark.slow
def test_demo_end_to_end(standin):
    root, data, path = standin
    keys = ("no_exit", "no_clustering", "full_attention", "window_5")
    s = _demo(root / "run", data, path, ablations=True, ablation_keys=keys)
    out = root / "run"
    for name in ("report.md", "summary.json", "results.csv", "accuracy_vs_gmacs.png", "per_stage.png",
                 "curves.png", "clusters.png", "accuracy_vs_throughput.png", "ablations.png", "bench/bench.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # the 26 held-out training images and the 60 test images: one pool, cut 20/40/40%
    assert s["images"] == {"holdout": 17, "calibration": 34, "test": 35, "test-56px": 35}
    assert s["calibration"]["split"] == "calibration" and s["calibration"]["images"] == 34
    x = s["exchangeability"]
    assert x["diff_gap"]["n_1"] == 34 and x["diff_gap"]["n_2"] == 35
    assert x["diff_gap"]["gap_low"] <= x["diff_gap"]["gap"] <= x["diff_gap"]["gap_high"]
    assert 0 <= x["confidence_ks"]["p_value"] <= 1 and len(x["per_class"]) >= 2
    # every compared model started from the stand-in and got the same budget
    for run in ("baseline", "sacvit", "ee_res"):
        cfg = json.loads((out / run / "config.json").read_text())
        assert cfg["init"] == str(path) and cfg["epochs"] == 1 and cfg["lr"] == Recipe().lr
    at = s["at_eta"]
    assert at["top1_low"] <= at["top1"] <= at["top1_high"] and at["images"] == 35
    assert [r["key"] for r in s["ablations"]] == ["full", *keys]
    no_exit, no_clustering = s["ablations"][1], s["ablations"][2]
    # the full method's row says whether its η was certified, as the headline does; η > 1 is not chosen
    assert s["ablations"][0]["criterion_met"] is s["calibration"]["criterion_met"]
    assert no_exit["criterion_met"] is None
    assert s["ablations"][0]["vs_full"]["diff"] == 0  # the full method paired with itself
    assert no_clustering["vs_full"]["n"] == 35
    assert no_exit["exit_share"] == 0 and no_exit["gmacs"] == pytest.approx(s["test"]["sac_only"]["gmacs"])
    assert no_clustering["gmacs_sac_only"] > s["test"]["sac_only"]["gmacs"]  # the whole image at full res
    sel = s["baseline_selection"]  # never below an earlier checkpoint of itself (the stand-in), on held-out data
    assert sel["chosen"] in ("stand-in", "fine-tuned")
    chosen = path if sel["chosen"] == "stand-in" else out / "baseline" / "last.safetensors"
    test = build_dataset("cluttered-fmnist", str(data), "test", 112)
    assert s["test"]["baseline"]["top1"] == pytest.approx(100 * plain_correct(load_checkpoint(chosen)[0], test).mean())
    # the calibrated η is the SAC-ViT checkpoint's default, as after `sacvit calibrate`
    meta = read_metadata(out / "sacvit" / "last.safetensors")
    assert meta.threshold == s["calibration"]["threshold"]
    assert meta.calibration["split"] == "calibration" and meta.calibration["by"] == "sacvit demo"
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "Figure 4" in report and "McNemar" in report
    assert "Do the calibration and test splits agree?" in report
    # a rerun reuses every training and every cached evaluation
    mtimes = {p: p.stat().st_mtime for p in (out / "records").iterdir()}
    again = _demo(root / "run", data, path, ablations=True, ablation_keys=keys)
    assert again["at_eta"] == s["at_eta"]
    assert {p: p.stat().st_mtime for p in (out / "records").iterdir()} == mtimes
    with pytest.raises(ValueError, match="other settings.*sac"):  # never reuse a run trained otherwise
        _demo(root / "run", data, path, sac={"window": 2})


@pytest.mark.slow
def test_calibration_never_reads_the_test_split(standin, tmp_path):
    """The same trainings with a poisoned test split (its images' labels redrawn): η is the same."""
    root, data, path = standin
    clean = _demo(tmp_path / "clean", data, path, bench=False)
    rng = np.random.default_rng(1)
    labels = np.concatenate([load_fashion_mnist(data, "train")[1], load_fashion_mnist(data, "test")[1]])
    test_images = pool_sources(160, 26, 60)[pool_positions(86, "test")]  # the test split's 35 images
    labels[test_images] = rng.integers(0, 10, len(test_images))
    poisoned = write_fake_fmnist(tmp_path / "poisoned", train_labels=labels[:160], test_labels=labels[160:])
    dirty = _demo(tmp_path / "dirty", poisoned, path, bench=False)
    assert dirty["calibration"] == clean["calibration"]
    assert dirty["test"]["baseline"]["top1"] != clean["test"]["baseline"]["top1"]  # the poison is real


@pytest.mark.slow
def test_demo_family_under_one_protocol(standin, tmp_path):
    """Every predecessor from the same stand-in with the same budget, certified on the calibration split,
    reported with intervals and paired differences; the summary's ``family`` has one row each."""
    root, data, path = standin
    members = ("cfvit", "lfvit", "dvt")
    s = _demo(tmp_path / "fam", data, path, family=members, overrides={"exit_scores": True})
    out = tmp_path / "fam"
    for run in members:
        cfg = json.loads((out / run / "config.json").read_text())
        assert cfg["init"] == str(path) and cfg["epochs"] == 1 and cfg["lr"] == Recipe().lr
    assert json.loads((out / "lfvit" / "config.json").read_text())["sac"] == {"window": 3}  # SAC-ViT's held-out m
    assert json.loads((out / "cfvit" / "config.json").read_text())["sac"] == {}  # its own selection
    rows = {r["method"]: r for r in s["family"]}
    assert list(rows) == ["baseline", "sacvit", *members]
    for m in ("sacvit", *members):
        r = rows[m]
        assert set(r) >= {"certified", "threshold", "gmacs_share", "test_top1", "test_top1_ci", "throughput_ratio"}
        lo, hi = r["test_top1_ci"]
        assert lo <= r["test_top1"] <= hi and r["images"] == 35 and r["throughput_ratio"] > 0
        assert (r["threshold"] is None) == (not r["certified"])
        if m != "sacvit":
            assert "sacvit_vs_this" in r
        meta = read_metadata(out / (m if m != "sacvit" else "sacvit") / "last.safetensors")
        assert meta.calibration["split"] == "calibration"
    assert {m["method"] for m in s["matched_gmacs"]} == {"sacvit", *members}
    assert rows["sacvit"]["stage_top1"]["last"] == pytest.approx(s["sac_only_vs_baseline"]["top1_b"])
    for m in members:  # each stage of SAC-ViT paired against the same stage of the predecessor
        for stage, d in rows[m]["sacvit_vs_this_by_stage"].items():
            assert d["diff"] == pytest.approx(rows["sacvit"]["stage_top1"][stage] - rows[m]["stage_top1"][stage])
    assert "### Each method's two ends" in (out / "report.md").read_text()
    assert (out / "family.png").stat().st_size > 0
    bench = {r["method"] for r in s["bench"]}
    assert bench >= {"deit", "sacvit", *members}
    assert "adaptive-ViT family" in (out / "report.md").read_text()
    scores = s["exit_scores"]
    assert [r["score"] for r in scores["scores"]] == ["max_prob", "temperature", "margin"] and scores["temperature"] > 0
    assert scores["held_out_best"] in ("max_prob", "temperature", "margin") and scores["images"] == 17


@pytest.mark.slow
def test_budget_check_sets_each_model_against_the_other_budget(standin, tmp_path):
    root, data, path = standin
    _demo(tmp_path / "one", data, path, bench=False, family=["cfvit"])
    s = _demo(tmp_path / "three", data, path, bench=False, family=["cfvit"], overrides={"epochs": 3},
              against=str(tmp_path / "one"))
    rows = {r["model"]: r for r in s["budget_check"]["rows"]}
    assert set(rows) == {"baseline", "SAC-ViT, SAC only", "SAC-ViT, EE stage", "plain ViT at 56 px", "CF-ViT, last stage"}
    cf = next(e for e in s["family"] if e["method"] == "cfvit")
    assert rows["CF-ViT, last stage"]["this"]["folder"] == str(Path(cf["checkpoint"]).parent)
    for name in ("plain ViT at 56 px fine-tune", "CF-ViT fine-tune (last stage)"):
        assert len(s["curves"][name]) == 1 + 3  # every compared model's validation curve, from the stand-in's end
    holdout = build_dataset("cluttered-fmnist", str(data), "holdout", 112)
    for r in rows.values():
        assert (r["other"]["epochs"], r["this"]["epochs"], r["images"]) == (1, 3, len(holdout))
        assert r["diff"]["diff"] == pytest.approx(r["this"]["top1"] - r["other"]["top1"])
        assert r["longer_helps"] == (r["diff"]["diff_low"] > 0)
    for run, row in (("one", rows["baseline"]["other"]), ("three", rows["baseline"]["this"])):
        best = max(json.loads(line)["val_top1"] for line in (tmp_path / run / "baseline" / "metrics.jsonl").open())
        weights = row["folder"] + ("/best.safetensors" if row["epoch"] != row["epochs"] else "/last.safetensors")
        assert 100 * plain_correct(load_checkpoint(weights)[0], holdout).mean() == pytest.approx(best, abs=1e-6)
        assert row["top1"] == pytest.approx(best, abs=1e-6)  # each run reported at its best validation epoch
    assert "Is the budget enough?" in (tmp_path / "three" / "report.md").read_text()
    assert [len(v) for k, v in s["curves"].items() if "--against" in k] == [1, 1]  # its reported weights, measured now


def test_against_a_folder_that_is_no_demo_run_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="not a sacvit demo output folder"):
        DemoConfig(out=str(tmp_path / "out"), against=str(tmp_path / "nope"))


def test_the_family_is_opt_in_and_the_budget_records_what_the_run_trains():
    """No preset trains the predecessors unless asked (the full preset fits its 90 minutes without
    them); the summary's ``budget`` is the run's, ``--family`` included."""
    assert DemoConfig(preset="full").members == () and DemoConfig().members == ()
    cfg = DemoConfig(preset="full", family=("cfvit", "dvt"), overrides={"epochs": 4})
    assert cfg.members == ("cfvit", "dvt") and cfg.budget().family == ("cfvit", "dvt") and cfg.budget().epochs == 4
    with pytest.raises(ValueError, match="unknown"):
        DemoConfig(family=("tome",))


@pytest.mark.parametrize("summary", ["demo", "full"])
def test_the_terminal_verdict_says_whether_eta_was_certified(summary):
    """The committed summaries: `make demo`'s certifies nothing, the full preset's certifies η."""
    from sacvit.demo.report import verdict
    s = json.loads((Path(__file__).resolve().parents[1] / "docs" / summary / "summary.json").read_text())
    first = verdict(s).strip().splitlines()[0]
    assert ("(certified on the calibration split)" in first) == s["calibration"]["certified"]
    assert ("nothing certified" in first) == (not s["calibration"]["certified"])
