"""``sacvit demo``: the whole evidence for SAC-ViT on the embedded data, from one command.

1. Fine-tune, from the same stand-in (a plain ViT trained at the full resolution, the demo's
   DeiT) and with the same recipe and budget: the full-resolution baseline, SAC-ViT and the
   plain ViT at the EE resolution (:mod:`.runs`). The baseline may not end below an earlier
   checkpoint of itself: the reported baseline is the better, on the validation split, of the
   stand-in and its fine-tuned weights.
2. Certify η on the calibration split: the cheapest threshold certified within ``tolerance``
   points of the baseline's accuracy (:mod:`.evidence`). Nothing is chosen on the test split;
   the validation, calibration and test splits are one random partition of one pool
   (:mod:`sacvit.data.splits`), and the report checks that calibration and test agree.
3. Report on the whole test split with 95% intervals: the η sweep with the per-stage analysis
   (Figure 4), SAC-ViT at the calibrated η against the baseline (paired bootstrap and McNemar),
   the GCA window against a fixed centre and a random window on the same weights, ToMe and EViT
   on the baseline's weights, the wall clock of the trained models, the Figure-5 grid, the
   validation curves and, with ``--ablations``, the Figure-3 set (:mod:`.ablations`).

Everything lands in ``OUT/``: ``report.md`` (every table, as the README quotes them),
``summary.json``, CSVs and PNGs. A second run reuses finished trainings and cached evaluations,
and resumes an interrupted training where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import report
from .. import flops
from ..resampling import resample_check
from ..bench import BenchConfig, run
from ..data import DEFAULT_FMNIST_DIR, build_dataset
from ..engine.calibrate import calibration_record, store_threshold
from ..engine.evaluate import COLUMNS, plain_correct, sweep
from ..io.checkpoint import load_checkpoint
from ..peers import build_peer
from ..report import SWEEP_TABLE, format_table, write_csv, write_json
from ..viz import plot_clusters
from .ablations import run_ablations
from .config import DemoConfig
from .convergence import budget_check
from .evidence import SAC_ONLY, Evidence, calibrate, exchangeability, paired, plain_row, sac_correct
from .exit_scores import exit_score_study
from .family import FAMILY_NAMES, LAST_STAGE, run_family
from .report import bench_row
from .runs import PLAIN_MODEL, SAC_MODEL, curve, fine_tune
from .standin import standin_path

__all__ = ["evaluation_datasets", "run_demo"]


def evaluation_datasets(cfg: DemoConfig) -> dict[str, Any]:
    """The demo's validation (``holdout``), calibration and test splits at 112 px, pre-rendered
    into ``OUT/cache``."""
    budget = cfg.budget()
    common = dict(seed=cfg.seed, prerender=True, cache_dir=Path(cfg.out) / "cache")
    return {split: build_dataset("cluttered-fmnist", cfg.data_dir, split, 112, length=getattr(budget, split), **common)
            for split in ("holdout", "calibration", "test")}


def _store_threshold(path: Path, choice, met: bool, cfg: DemoConfig) -> None:
    """Make the calibrated η the checkpoint's default, as ``sacvit calibrate`` does, so that
    ``sacvit predict``/``eval``/``from_pretrained`` on the demo's SAC-ViT use it. When nothing is
    certified the demo reports SAC only, and stores that (η > 1: no early exit) with the record."""
    if choice.threshold is None:
        choice = dataclasses.replace(choice, threshold=SAC_ONLY)

    store_threshold(path, choice, calibration_record(
        choice, {"max_drop": cfg.tolerance, "delta": cfg.delta}, criterion_met=met, data="cluttered-fmnist",
        split="calibration", seed=cfg.seed, length=cfg.budget().calibration, by="sacvit demo"))


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train (or reuse) every compared model, measure, and write the report; returns the summary."""
    from .. import plots  # matplotlib loads only when a report is drawn (start-up time of `sacvit --help`)

    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.data_dir = cfg.data_dir or DEFAULT_FMNIST_DIR
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "demo_config.json", {**asdict(cfg), "recipe": dict(cfg.recipe)})
    standin = standin_path(cfg.standin)
    ckpt = {"baseline": fine_tune(cfg, "baseline", PLAIN_MODEL, standin),
            "sacvit": fine_tune(cfg, "sacvit", SAC_MODEL, standin),
            "ee_res": fine_tune(cfg, "ee_res", PLAIN_MODEL, standin, img_size=56)}
    ev = Evidence(out, evaluation_datasets(cfg), cfg.seed)
    ee_res_data = {s: _ee_view(cfg, s) for s in ("test",)}
    tuned = dict(ckpt)
    ckpt["baseline"], selection = _select_baseline(ev, standin, ckpt["baseline"])

    # ---- η on the calibration split (the baseline was chosen on the validation split)
    base_h = ev.plain(ckpt["baseline"], "holdout")
    base_c = ev.plain(ckpt["baseline"], "calibration")
    sac_c = ev.stages(ckpt["sacvit"], "calibration")
    choice, eta = calibrate(sac_c, base_c, cfg.tolerance, cfg.delta)
    met = choice.certified
    _store_threshold(ckpt["sacvit"], choice, met, cfg)

    # ---- the test split
    baseline, _ = load_checkpoint(ckpt["baseline"])
    base_t = ev.plain(ckpt["baseline"], "test")
    sac_t = ev.stages(ckpt["sacvit"], "test")
    ee_res_t = _plain_on(ckpt["ee_res"], ee_res_data["test"], ev, "test-56px")
    ee_res_model, _ = load_checkpoint(ckpt["ee_res"])
    rows = sweep(sac_t, sorted(set(cfg.thresholds) | {eta}))
    for r in rows:
        r["model"] = SAC_MODEL
    rows.append({**plain_row("baseline ViT 112 px", "baseline", base_t, flops.vit_gmacs(baseline)), "model": PLAIN_MODEL})
    rows.append({**plain_row("plain ViT at the EE resolution (56 px)", "ee_res", ee_res_t,
                             flops.vit_gmacs(ee_res_model)), "model": PLAIN_MODEL})
    write_csv(out / "results.csv", rows, COLUMNS)
    print(format_table(rows, SWEEP_TABLE))
    policies = {p: ev.stages(ckpt["sacvit"], "test", policy=p) for p in ("gca", "center", "random")}

    summary: dict[str, Any] = {
        "preset": cfg.preset, "budget": asdict(cfg.budget()), "recipe": dict(cfg.recipe),
        "standin": str(standin), "images": {k: len(v) for k, v in ev.datasets.items()},
        "baseline_selection": selection,
        "calibration": {**choice.to_dict(), "threshold": eta, "certified_threshold": choice.threshold,
                        "criterion_met": met, "split": "calibration",
                        "baseline_calibration_top1": 100 * float(base_c.mean())},
        "test": {r["mode"] if r["mode"] != "sacvit" else f"sacvit@{r['threshold']:.6g}": r for r in rows},
        "at_eta": sac_t.row(eta, label=f"SAC-ViT η={eta:.3g} (calibrated)"),
        "sacvit_vs_baseline": paired(base_t, sac_correct(sac_t, eta), cfg.seed),
        "sac_only_vs_baseline": paired(base_t, sac_correct(sac_t, SAC_ONLY), cfg.seed),
        "baseline_minus_ee_res": 100 * float(base_t.mean() - ee_res_t.mean()),
        "ee_res_vs_baseline": paired(ee_res_t, base_t, cfg.seed),
        "window_policies": {p: r.row(SAC_ONLY, "sac_only", f"SAC only, {p} window") for p, r in policies.items()},
        "gca_vs_center_sac_only": paired(sac_correct(policies["center"], SAC_ONLY),
                                         sac_correct(policies["gca"], SAC_ONLY), cfg.seed),
        "gca_vs_random_sac_only": paired(sac_correct(policies["random"], SAC_ONLY),
                                         sac_correct(policies["gca"], SAC_ONLY), cfg.seed),
        "gmacs_ratio_at_eta": sac_t.row(eta)["gmacs"] / flops.vit_gmacs(baseline),
    }
    peers = _peers(cfg, ev, baseline, base_t)
    summary["peers"] = peers
    fam = None
    if cfg.members:
        fam = run_family(cfg, ev, standin, {"ckpt": ckpt["sacvit"], "calibration": sac_c, "test": sac_t,
                                            "choice": choice, "eta": eta}, base_c, base_t, flops.vit_gmacs(baseline))
        for method in cfg.members:
            member_choice = fam["choices"][method]
            _store_threshold(Path(fam["checkpoints"][method]), member_choice, member_choice.certified, cfg)
        summary.update(family=fam["family"], matched_gmacs=fam["matched"])
    if cfg.budget().exit_scores:
        summary["exit_scores"] = exit_score_study(cfg, ev, ckpt["sacvit"], base_h, flops.vit_gmacs(baseline))
    if cfg.bench:
        summary["bench"] = _bench(cfg, ckpt, eta, fam)
        for entry in summary.get("family", []):
            if entry["method"] != "baseline":
                speed = bench_row(summary, entry["method"], entry["reported_threshold"])
                entry["throughput_ratio"] = None if speed is None else speed["speedup"]
    curves = {"stand-in (from scratch)": _standin_curve(standin),
              "baseline fine-tune": _shift(curve(out / "baseline", "val_top1"), standin),
              "SAC-ViT fine-tune (SAC stage)": _shift(curve(out / "sacvit", "val_top1_sac"), standin),
              "SAC-ViT fine-tune (EE stage)": _shift(curve(out / "sacvit", "val_top1_ee"), standin),
              "plain ViT at 56 px fine-tune": _shift(curve(out / "ee_res", "val_top1"), standin)}
    for method in cfg.members:
        curves[f"{FAMILY_NAMES[method]} fine-tune (last stage)"] = _shift(curve(out / method, LAST_STAGE[method]), standin)
    if cfg.against:
        members = {method: Path(fam["checkpoints"][method]) for method in cfg.members} if fam else {}
        summary["budget_check"] = _budget_check(cfg, ev, tuned, members)
        curves.update(_other_curves(cfg, summary["budget_check"], standin))
    summary["curves"] = curves
    summary["headline"] = _headline(summary, choice, eta, base_t)
    summary["resampling"] = _resampling(cfg, base_c, sac_c, base_t, sac_t)
    summary["exchangeability"] = exchangeability(
        eta, {k: ev.datasets[k].targets for k in ("calibration", "test")},
        {"calibration": base_c, "test": base_t}, {"calibration": sac_c, "test": sac_t})
    if cfg.ablations:
        summary["ablations"] = run_ablations(cfg, ev, ckpt, standin, base_h, sac_t, eta, met)

    title = f"Cluttered Fashion-MNIST, test split ({len(base_t)} images), preset {cfg.preset}"
    plots.accuracy_vs_gmacs(rows, out / "accuracy_vs_gmacs.png", title, chosen=eta)
    plots.per_stage(rows, out / "per_stage.png", title)
    plots.training_curves(curves, out / "curves.png", "validation top-1 over training (the stand-in, then each fine-tune)")
    if cfg.bench:
        plots.accuracy_vs_throughput(_speed_points(summary), out / "accuracy_vs_throughput.png", title)
    _clusters(cfg, ckpt["sacvit"], ev.datasets["test"], sac_t, eta, out / "clusters.png")
    if fam is not None:
        points = [{"method": e["method"], "gmacs": e["gmacs"], "top1": e["test_top1"], "top1_low": e["test_top1_ci"][0],
                   "top1_high": e["test_top1_ci"][1], "certified": e["certified"]}
                  for e in summary["family"] if e["method"] != "baseline"]
        others = [{"method": "baseline", "gmacs": flops.vit_gmacs(baseline), "top1": summary["test"]["baseline"]["top1"]},
                  {"method": "plain ViT 56 px", "gmacs": flops.vit_gmacs(ee_res_model), "top1": summary["test"]["ee_res"]["top1"]}]
        others += [{"method": r["method"], "gmacs": r["gmacs"], "top1": r["top1"]} for r in peers]
        plots.family(fam["curves"], points, out / "family.png", family_title(len(base_t)), peers=others)
    if cfg.ablations:
        plots.ablations(summary["ablations"], out / "ablations.png", "each design removed in turn (test split)")
    summary["seconds"] = time.time() - t0
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report.markdown(summary))
    print(report.verdict(summary))
    print(f"wrote {out}/report.md, summary.json, results.csv and the PNGs ({summary['seconds'] / 60:.1f} min)")
    return summary


def family_title(n_test: int) -> str:
    """Figure 1's title (short enough for the figure's width)."""
    return f"Figure 1: test split ({n_test} images), η certified on the calibration split"


def _headline(s: dict[str, Any], choice, eta: float, base_t) -> dict[str, Any]:
    """SAC-ViT at its certified η against the baseline on the test split, in one object (from the
    summary's own rows: ``at_eta``, ``gmacs_ratio_at_eta``, ``sacvit_vs_baseline`` and the bench)."""
    d, row = s["sacvit_vs_baseline"], s["at_eta"]
    speed = bench_row(s, "sacvit", eta)
    return {"certified": bool(choice.certified), "threshold": choice.threshold, "reported_threshold": eta,
            "max_drop": choice.max_drop, "delta": choice.delta, "calibration_bound": choice.bound,
            "gmacs_share": s["gmacs_ratio_at_eta"], "test_top1": row["top1"],
            "test_top1_ci": [row["top1_low"], row["top1_high"]], "baseline_test_top1": 100 * float(base_t.mean()),
            "test_diff_pt": d["diff"], "test_diff_ci": [d["diff_low"], d["diff_high"]],
            "non_inferior": d["diff_low"] >= -choice.max_drop,
            "throughput_ratio": None if speed is None else speed["speedup"]}


def _resampling(cfg: DemoConfig, base_c, sac_c, base_t, sac_t, draws: int = 200) -> dict[str, Any]:
    """Does the certificate hold on these records? The calibration and test records pooled are the
    population; calibration sets are drawn from it with replacement and each rule's η is judged
    by its true drop on the pool (:func:`sacvit.resampling.resample_check`)."""
    pool = {k: np.concatenate([getattr(sac_c, k), getattr(sac_t, k)])
            for k in ("confidence", "correct_ee", "correct_sac", "gmacs_ee", "gmacs_sac")}
    ref = np.concatenate([base_c, base_t])
    n_cal = len(sac_c)
    check = resample_check(pool["confidence"], pool["correct_ee"], pool["correct_sac"], ref,
                                   pool["gmacs_ee"], pool["gmacs_sac"], n_cal=n_cal, draws=draws,
                                   max_drop=cfg.tolerance, delta=cfg.delta, seed=cfg.seed)
    return {"pool": int(len(ref)), "n_cal": n_cal, **check.to_dict()}


def _select_baseline(ev: Evidence, standin: Path, tuned: Path) -> tuple[Path, dict[str, Any]]:
    """The baseline may not end below an earlier checkpoint of itself: of the stand-in (the
    baseline before its fine-tuning) and the fine-tuned weights, the better on the validation split."""
    scores = {"stand-in": 100 * float(ev.plain(standin, "holdout").mean()),
              "fine-tuned": 100 * float(ev.plain(tuned, "holdout").mean())}
    chosen = "fine-tuned" if scores["fine-tuned"] > scores["stand-in"] else "stand-in"
    print(f"baseline: {chosen} (validation top-1: stand-in {scores['stand-in']:.2f}%, fine-tuned "
          f"{scores['fine-tuned']:.2f}%)", flush=True)
    return (tuned if chosen == "fine-tuned" else standin), {"holdout_top1": scores, "chosen": chosen}


def _budget_check(cfg: DemoConfig, ev: Evidence, tuned: dict[str, Path], members: dict[str, Path]) -> dict[str, Any]:
    """This run's fine-tuned models (the family ``members`` too: their last stage) against
    ``cfg.against``'s, on the validation split."""
    view = {}
    last_stage = {f"{FAMILY_NAMES[m]}, last stage": m for m in members}

    def correct(label: str, weights: Path) -> np.ndarray:
        if label == "baseline":
            return ev.plain(weights, "holdout")
        if label in last_stage:
            return sac_correct(ev.records(weights, "holdout"), SAC_ONLY)
        if label.startswith("SAC-ViT"):
            records = ev.stages(weights, "holdout")
            return records.correct_ee if "EE" in label else records.correct_sac
        if "data" not in view:
            view["data"] = _ee_view(cfg, "holdout")
        return _plain_on(weights, view["data"], ev, "holdout-56px")

    this = {"baseline": ("baseline", tuned["baseline"]), "SAC-ViT, SAC only": ("sacvit", tuned["sacvit"]),
            "SAC-ViT, EE stage": ("sacvit", tuned["sacvit"]), "plain ViT at 56 px": ("ee_res", tuned["ee_res"])}
    this.update({label: (m, members[m]) for label, m in last_stage.items()})
    return budget_check(this, Path(cfg.against), correct, cfg.seed)


def _other_curves(cfg: DemoConfig, check: dict[str, Any], standin: Path) -> dict[str, list[tuple[float, float]]]:
    """The ``--against`` run's reported weights beside this run's curves: one point each, at the
    training images its reported epoch had seen, measured now on this run's validation split (its
    own logged curve may come from another split or code version)."""
    rows = {r["model"]: r["other"] for r in check["rows"]}
    out = {}
    for label, folder, key, model in (("baseline", "baseline", "val_top1", "baseline"),
                                      ("SAC-ViT (SAC stage)", "sacvit", "val_top1_sac", "SAC-ViT, SAC only")):
        if model in rows:
            r, seen = rows[model], _shift(curve(Path(cfg.against) / folder, key), standin)
            if len(seen) >= r["epoch"]:
                out[f"{label}, {r['epochs']} epochs (--against, epoch {r['epoch']})"] = [(seen[r["epoch"] - 1][0], r["top1"])]
    return out


def _ee_view(cfg: DemoConfig, split: str):
    """The split at 56 px: the 112-px images downsampled as the EE stage does (for the EE-res ViT)."""
    budget = cfg.budget()
    length = getattr(budget, split)
    return build_dataset("cluttered-fmnist", cfg.data_dir, split, 56, length=length, seed=cfg.seed, prerender=True,
                         cache_dir=Path(cfg.out) / "cache")


def _plain_on(ckpt: Path, dataset, ev: Evidence, tag: str):
    ev.datasets[tag] = dataset
    return ev.plain(ckpt, tag)


def _peers(cfg: DemoConfig, ev: Evidence, baseline, base_t) -> list[dict[str, Any]]:
    """ToMe and EViT on the baseline's weights: top-1 on the test split (throughput from the bench)."""
    rows = []
    for method, key, values in (("tome", "r", cfg.tome_r), ("evit", "keep_rate", cfg.evit_keep)):
        for v in values:
            path = ev.dir / f"peer_{method}_{v}_{len(ev.datasets['test'])}_{_short_hash(baseline)}.npz"
            peer = build_peer(method, baseline, **{key: v})
            if path.is_file():
                with np.load(path) as f:
                    correct = f["correct"]
            else:
                correct = plain_correct(peer, ev.datasets["test"])
                np.savez(path, correct=correct)
            setting = f"r={v}" if method == "tome" else f"keep={v:g}"
            rows.append({**plain_row(f"{method} {setting}", method, correct, peer.gmacs()), "method": method,
                         "setting": setting, "paired_vs_baseline": paired(base_t, correct, cfg.seed)})
    return rows


def _short_hash(model) -> str:
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _bench(cfg: DemoConfig, ckpt: dict[str, Path], eta: float, fam: dict[str, Any] | None = None
           ) -> list[dict[str, Any]]:
    """Batch-64 throughput and batch-1 latency of the trained models (``sacvit bench``), the
    predecessors (when trained) at their own certified η, in the same interleaved run."""
    budget = cfg.budget()
    members = {} if fam is None else {m: fam["checkpoints"][m] for m in cfg.members}
    methods = ["deit", "deit-ee", "sacvit", *members, "tome", "evit"]
    result = run(BenchConfig(checkpoint=str(ckpt["sacvit"]), baseline_checkpoint=str(ckpt["baseline"]),
                             methods=methods, member_checkpoints=members,
                             member_thresholds={m: [fam["thresholds"][m]] for m in members},
                             data="cluttered-fmnist", data_dir=cfg.data_dir, split="test", limit=64,
                             thresholds=[eta, SAC_ONLY], tome_r=list(cfg.tome_r), evit_keep=list(cfg.evit_keep),
                             repeats=budget.bench_repeats, latency_repeats=20 if budget.bench_repeats > 1 else 2,
                             interleave=True, threads=cfg.threads or 2,
                             score=False, out=str(Path(cfg.out) / "bench")))
    return [{k: v for k, v in r.items() if k not in ("times_ms", "latencies_ms")} for r in result["rows"]]


def _speed_points(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-1 (test split) against the measured batch-64 throughput of every timed model."""
    eta = s["calibration"]["threshold"]
    points = [({**s["test"]["baseline"], "method": "deit", "setting": "baseline"}, bench_row(s, "deit")),
              ({**s["at_eta"], "method": "sacvit", "setting": f"η={eta:.3g}"}, bench_row(s, "sacvit", eta)),
              ({**s["test"]["sac_only"], "method": "sacvit", "setting": "SAC only"}, bench_row(s, "sacvit", SAC_ONLY))]
    points += [(r, bench_row(s, r["method"], setting=r["setting"])) for r in s["peers"]]
    points += [({"method": e["method"], "setting": f"η={e['reported_threshold']:.3g}", "top1": e["test_top1"],
                 "top1_low": e["test_top1_ci"][0], "top1_high": e["test_top1_ci"][1]},
                bench_row(s, e["method"], e["reported_threshold"]))
               for e in s.get("family", []) if e["method"] not in ("baseline", "sacvit")]
    return [{**r, "img_s": b["img_s"]} for r, b in points if b is not None]


def _standin_curve(standin: Path) -> list[tuple[float, float]]:
    record = json.loads(standin.with_suffix(".json").read_text())
    return [(r["images"], r["val_top1"]) for r in record["curve"] if "val_top1" in r]


def _shift(points: list[tuple[float, float]], standin: Path) -> list[tuple[float, float]]:
    """A fine-tune's curve continued from the stand-in's last point (images seen in total)."""
    base = _standin_curve(standin)
    start = base[-1] if base else (0.0, None)
    return ([start] if start[1] is not None else []) + [(start[0] + x, y) for x, y in points]


def _clusters(cfg: DemoConfig, ckpt: Path, dataset, records, eta: float, path: Path) -> None:
    """Figure 5: six test images that exit at EE beside six that go through SAC, at the calibrated η."""
    exited, _, _ = records.at(eta)
    picks = list(np.flatnonzero(exited)[:6]) + list(np.flatnonzero(~exited)[:6])
    raw = build_dataset("cluttered-fmnist", cfg.data_dir, "test", 112, seed=cfg.seed)
    model, meta = load_checkpoint(ckpt)
    images = torch.stack([dataset[i][0] for i in picks])
    plot_clusters(model, images, [raw.raw(int(i)) for i in picks], path, threshold=eta,
                  labels=[dataset[i][1] for i in picks], class_names=list(meta.class_names), ncols=6)
