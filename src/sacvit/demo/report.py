"""The demo's ``report.md``: every table of the evidence, in the form the README quotes, and the
one-paragraph verdict printed at the end of ``sacvit demo``."""

from __future__ import annotations

from typing import Any

from ..data.cluttered import ClutteredFashionMNIST

__all__ = ["markdown", "verdict", "bench_row", "targets"]


def _ci(r: dict[str, Any]) -> str:
    return f"{r['top1']:.2f} [{r['top1_low']:.2f}, {r['top1_high']:.2f}]"


def _diff(p: dict[str, Any]) -> str:
    return (f"{p['diff']:+.2f} pt [{p['diff_low']:+.2f}, {p['diff_high']:+.2f}], McNemar p = {p['p_value']:.3g} "
            f"({p['b_only']} vs {p['a_only']} discordant)")


def _short(p: dict[str, Any]) -> str:
    return f"{p['diff']:+.2f} [{p['diff_low']:+.2f}, {p['diff_high']:+.2f}]"


def _table(head: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(line) + " |" for line in lines]) + "\n"


def bench_row(s: dict[str, Any], method: str, threshold: float | None = None, setting: str | None = None):
    """The benchmark row of ``method`` (at ``threshold`` / with ``setting``), or ``None``."""
    for r in s.get("bench") or []:
        if r["method"] != method:
            continue
        if threshold is not None and (r["threshold"] is None or abs(r["threshold"] - threshold) > 1e-9):
            continue
        if setting is not None and r["setting"] != setting:
            continue
        return r
    return None


def _speed(r) -> tuple[str, str]:
    return ("–", "–") if r is None else (f"{r['img_s']:.0f}", f"{r['speedup']:.2f}×")


def targets(s: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """The issue's targets: ``name → (measured value, met)``."""
    at = s["at_eta"]
    base = s["test"]["baseline"]
    speed = bench_row(s, "sacvit", s["calibration"]["threshold"])
    d = s["sacvit_vs_baseline"]
    out = {
        "certified on the calibration split (ε 0.5 pt, δ 0.05)": (float(s["calibration"]["certified"]),
                                                              bool(s["calibration"]["certified"])),
        "top-1 gap to the baseline, point estimate (pt, ≥ −0.5)": (d["diff"], d["diff"] >= -0.5),
        "top-1 gap, paired 95% CI lower end (pt, ≥ −0.5: non-inferior)": (d["diff_low"], d["diff_low"] >= -0.5),
        "GMACs vs the baseline (≤ 40%)": (100 * at["gmacs"] / base["gmacs"], at["gmacs"] <= 0.4 * base["gmacs"]),
        "(a) baseline − EE-resolution ViT (pt, ≥ 5)": (s["baseline_minus_ee_res"],
                                                        s["baseline_minus_ee_res"] >= 5),
        "(b) SAC only, GCA − centre window (pt, ≥ 3)": (s["gca_vs_center_sac_only"]["diff"],
                                                         s["gca_vs_center_sac_only"]["diff"] >= 3),
    }
    if speed is not None:
        out["batch-64 throughput vs the baseline (≥ 2×)"] = (speed["speedup"], speed["speedup"] >= 2)
    return out


def markdown(s: dict[str, Any]) -> str:
    """All tables of a demo summary as Markdown."""
    t, cal, eta = s["test"], s["calibration"], s["calibration"]["threshold"]
    base = t["baseline"]
    n_test = base["images"]
    parts = [f"# sacvit demo — preset `{s['preset']}`\n",
             f"Cluttered Fashion-MNIST (v{ClutteredFashionMNIST.VERSION}), {n_test} test images; η calibrated on {cal['images']} calibration "
             f"images ({cal['criterion']}: η = {eta:.4g}, criterion "
             f"{'met' if cal['criterion_met'] else 'NOT met'} on the calibration split). Budget: "
             f"{s['budget']['epochs']} epoch(s) of {s['budget']['train_length'] or 'all'} training images per model, "
             f"from the same stand-in; wall-clock {s['seconds'] / 60:.1f} min.\n"]
    lines = []
    for key, label in (("baseline", "baseline ViT, 112 px"), ("ee_res", "plain ViT at the EE resolution, 56 px"),
                       ("ee_only", "SAC-ViT, EE stage only (η = 0)"), ("sac_only", "SAC-ViT, SAC only (η > 1)")):
        r = t[key]
        speed = _speed(bench_row(s, {"baseline": "deit", "sac_only": "sacvit"}.get(key, ""),
                                  1.01 if key == "sac_only" else None))
        lines.append([label, "–" if r["threshold"] is None else f"{r['threshold']:g}", _ci(r), f"{r['gmacs']:.4f}",
                      f"{100 * r['gmacs'] / base['gmacs']:.0f}%",
                      "–" if r["exit_share"] is None else f"{100 * r['exit_share']:.1f}%", *speed])
    at = s["at_eta"]
    lines.append(["**SAC-ViT, calibrated η**", f"{eta:.3g}", f"**{_ci(at)}**", f"{at['gmacs']:.4f}",
                  f"{100 * at['gmacs'] / base['gmacs']:.0f}%", f"{100 * at['exit_share']:.1f}%",
                  *_speed(bench_row(s, "sacvit", eta))])
    parts.append("## Headline (test split)\n")
    parts.append(_table(["model", "η", "top-1 % [95% CI]", "GMACs/img", "vs baseline", "exit @ EE",
                         "img/s (batch 64)", "speedup"], lines))
    parts.append(f"\nSAC-ViT at η = {eta:.3g} minus the baseline, paired over the {n_test} test images: "
                 f"{_diff(s['sacvit_vs_baseline'])}. SAC only minus the baseline: {_diff(s['sac_only_vs_baseline'])}.\n")
    parts.append("\n## Targets\n")
    parts.append(_table(["target", "measured", "met"],
                        [[k, f"{v:.2f}", "yes" if ok else "**no**"] for k, (v, ok) in targets(s).items()]))
    parts.append("\n## Per-stage analysis (Figure 4)\n")
    parts.append(_table(["η", "exit @ EE", "top-1 % [95% CI]", "top-1 of exited", "top-1 of SAC images", "GMACs/img"],
                        [[f"{r['threshold']:.3g}", f"{100 * r['exit_share']:.1f}%", _ci(r),
                          "–" if r["top1_exited"] is None else f"{r['top1_exited']:.2f}",
                          "–" if r["top1_sac"] is None else f"{r['top1_sac']:.2f}", f"{r['gmacs']:.4f}"]
                         for r in sorted({r["threshold"]: r for r in t.values()
                                          if r["mode"] in ("sacvit", "ee_only", "sac_only")}.values(),
                                         key=lambda r: r["threshold"])]))
    w = s["window_policies"]
    parts.append("\n## Where to look: the GCA window against fixed and random windows (same weights, SAC only)\n")
    parts.append(_table(["window", "top-1 % [95% CI]"], [[k, _ci(v)] for k, v in w.items()]))
    parts.append(f"\nGCA − centre: {_diff(s['gca_vs_center_sac_only'])}; GCA − random: {_diff(s['gca_vs_random_sac_only'])}.\n")
    if s.get("peers"):
        parts.append("\n## Token-reduction peers on the baseline's weights\n")
        lines = []
        for r in s["peers"]:
            speed = _speed(bench_row(s, r["method"], setting=r["setting"]))
            lines.append([r["method"], r["setting"], _ci(r), f"{r['gmacs']:.4f}", *speed,
                          _short(r["paired_vs_baseline"])])
        parts.append(_table(["method", "setting", "top-1 % [95% CI]", "GMACs/img", "img/s", "speedup", "vs baseline (pt, 95% CI)"],
                            lines))
    if s.get("family"):
        parts.append(_family_section(s))
    if s.get("exit_scores"):
        e = s["exit_scores"]
        parts.append(f"\n## Exit score (validation split, {e['images']} images; T = {e['temperature']:.3g} fitted there)\n")
        parts.append(_table(["score", "EE ECE", "certified η", "GMACs share at it", "validation top-1 at 25 / 30 / 40% GMACs"],
                            [[r["score"], "–" if r["ece"] is None else f"{100 * r['ece']:.1f}%",
                              "not certified" if r["threshold"] is None else f"{r['threshold']:.3g}",
                              f"{100 * r['gmacs_share']:.1f}%",
                              " / ".join(f"{v:.2f}" for v in r["holdout_top1_at_matched_gmacs"].values())]
                             for r in e["scores"]]))
        parts.append(f"\nBest on validation at matched GMACs: {e['held_out_best']}; the default stays {e['default']} "
                     "(the paper's) unless changed with `--sac '{\"exit_score\": …}'`.\n")
    if s.get("ablations"):
        parts.append("\n## Ablations (Figure 3): each design removed in turn, own η calibrated on the validation split\n")
        parts.append(_table(["variant", "η", "top-1 % [95% CI]", "GMACs/img", "exit @ EE", "SAC only", "EE only",
                             "vs baseline (pt, 95% CI)", "vs SAC-ViT (pt, 95% CI)", "validation top-1 / GMACs at η"],
                            [[r["label"], f"{r['threshold']:.3g}" + (" (not certified)" if r["criterion_met"] is False else ""),
                              _ci(r), f"{r['gmacs']:.4f}", f"{100 * r['exit_share']:.1f}%", f"{r['top1_sac_only']:.2f}",
                              f"{r['top1_ee_only']:.2f}", _short(r["vs_baseline"]),
                              _short(r["vs_full"]),
                              f"{r['holdout_top1']:.2f} / {r['holdout_gmacs']:.4f}"]
                             for r in s["ablations"]]))
    sel = s.get("baseline_selection")
    if sel:
        h = sel["holdout_top1"]
        parts.append("\n## Baseline checkpoint (validation split)\n")
        parts.append(f"The baseline may not end below an earlier checkpoint of itself: stand-in {h['stand-in']:.2f}%, "
                     f"fine-tuned {h['fine-tuned']:.2f}% validation top-1; reported: the {sel['chosen']} weights.\n")
    if s.get("budget_check"):
        parts.append(_budget_section(s["budget_check"]))
    parts.append("\n## Calibration (calibration split)\n")
    parts.append(f"Baseline calibration-split top-1 {cal['baseline_calibration_top1']:.2f}%; "
                 + (f"certified η = {eta:.4g} reaches {cal['top1']:.2f}% at {cal['gmacs']:.4f} GMACs/img with "
                    f"{100 * cal['exit_share']:.1f}% exiting ({cal['criterion']}). {cal['statement']}\n"
                    if cal.get("certified") else
                    f"nothing certified ({cal['criterion']}): {cal.get('statement', '')} Reported at SAC only.\n"))
    rs = s.get("resampling")
    if rs:
        parts.append("\n## Does the guarantee hold? (resampling the calibration + test records)\n")
        parts.append(f"{rs['draws']} calibration sets of {rs['n_cal']} images drawn with replacement from the "
                     f"{rs['pool']} pooled records; each rule's η judged by its true drop on the pool "
                     f"(ε = {rs['max_drop']:g} pt, δ = {rs['delta']:g}).\n")
        parts.append(_table(["rule", "true drop > ε (share of draws)", "± MC s.e.", "returns an η", "GMACs share"],
                            [[k, f"{v['violation_rate']:.3f}", f"{v['se']:.3f}", f"{v['returned_rate']:.2f}",
                              "–" if v["gmacs_share"] is None else f"{v['gmacs_share']:.3f}"]
                             for k, v in rs["rules"].items()]))
    x = s.get("exchangeability")
    if x:
        parts.append(_exchangeability_section(x))
    h = s.get("headline")
    if h:
        parts.append("\n## Headline object (`summary.json` → `headline`)\n")
        parts.append(f"certified: {h['certified']}; η = {h['reported_threshold']:.4g}; "
                     f"{100 * h['gmacs_share']:.1f}% of the baseline's GMACs; top-1 {h['test_top1']:.2f}% vs "
                     f"{h['baseline_test_top1']:.2f}% ({h['test_diff_pt']:+.2f} pt, paired 95% CI "
                     f"[{h['test_diff_ci'][0]:+.2f}, {h['test_diff_ci'][1]:+.2f}]; non-inferior at ε: "
                     f"{h['non_inferior']}); batch-64 throughput ×{h['throughput_ratio'] or float('nan'):.2f}.\n")
    parts.append("\n## Validation curves (validation split)\n")
    parts.append(_table(["run", "points (training images seen → top-1 %)"],
                        [[k, ", ".join(f"{x / 1000:.0f}k → {y:.2f}" for x, y in v)] for k, v in s["curves"].items()]))
    return "\n".join(parts)


def _budget_section(b: dict[str, Any]) -> str:
    """Is the budget enough? This run's models against the ``--against`` run's, on validation."""
    def run(r: dict[str, Any]) -> str:
        return f"{r['epochs']} (epoch {r['epoch']})"

    rows = [[r["model"], run(r["other"]), f"{r['other']['top1']:.2f}", run(r["this"]), f"{r['this']['top1']:.2f}",
             _diff(r["diff"]), "**yes**" if r["longer_helps"] else "no"] for r in b["rows"]]
    n = b["rows"][0]["images"] if b["rows"] else 0
    return (f"\n## Is the budget enough? (validation split, {n} images; against `{b['against']}`)\n"
            "Each model's reported weights are its best epoch on the validation split (early stopping).\n\n"
            + _table(["model", "other: epochs (reported)", "top-1 %", "this: epochs (reported)", "top-1 %",
                      "this − other, paired", "longer budget helps (95% CI above 0)"], rows))


def _exchangeability_section(x: dict[str, Any]) -> str:
    """Do the calibration and test splits agree? (the premise of the guarantee, measured)."""
    def gap_row(name: str, g: dict[str, Any], fmt: str = ".2f") -> list[str]:
        return [name, format(g["diff_1"], fmt), format(g["diff_2"], fmt),
                f"{g['gap']:+.2f} [{g['gap_low']:+.2f}, {g['gap_high']:+.2f}]", f"{g['p_value']:.2f}"]
    ks = x["confidence_ks"]
    rows = [gap_row("SAC-ViT at η − baseline (pt)", x["diff_gap"], "+.2f"), gap_row("SAC only top-1 (%)", x["sac_only_gap"]),
            gap_row("EE top-1 (%)", x["ee_gap"]), gap_row("baseline top-1 (%)", x["baseline_gap"])]
    return ("\n## Do the calibration and test splits agree?\n"
            f"At η = {x['threshold']:.4g}: exit share {100 * x['exit_share']['calibration']:.1f}% (calibration) vs "
            f"{100 * x['exit_share']['test']:.1f}% (test); EE confidence distributions: KS {ks['statistic']:.3f}, "
            f"p = {ks['p_value']:.2f}. Gaps are calibration − test, with a 95% interval; splits drawn alike "
            "leave 0 outside it in about 5% of runs.\n"
            + _table(["quantity", "calibration", "test", "gap [95% CI]", "p"], rows) + "\n")


def _family_section(s: dict[str, Any]) -> str:
    """Figure 1 as tables: every member at its certified η, then at matched GMACs."""
    lines = []
    for e in s["family"]:
        thr = "–" if e["method"] == "baseline" else (
            f"{e['reported_threshold']:.3g}" + ("" if e["certified"] else " (not certified: SAC only)"))
        ratio = "–" if e["throughput_ratio"] is None else f"{e['throughput_ratio']:.2f}×"
        lo, hi = e["test_top1_ci"]
        vs_sac = _short(e["sacvit_vs_this"]) if "sacvit_vs_this" in e else "–"
        lines.append([e["method"], thr, f"{e['test_top1']:.2f} [{lo:.2f}, {hi:.2f}]", f"{100 * e['gmacs_share']:.0f}%",
                      ratio, _short(e["vs_baseline"]) if "vs_baseline" in e else "–", vs_sac])
    out = ["\n## The adaptive-ViT family (Figure 1): same stand-in, recipe, budget, ε and δ\n",
           _table(["method", "η (certified on calibration)", "top-1 % [95% CI]", "GMACs vs baseline", "throughput (batch 64)",
                   "− baseline (pt, 95% CI)", "SAC-ViT − this (pt, 95% CI)"], lines),
           "\n### At matched GMACs (η chosen on the calibration split for each target)\n"]
    rows = [[f"{100 * m['target_share']:.0f}%", m["method"], f"{m['threshold']:.3g}", f"{100 * m['gmacs_share']:.1f}%",
             f"{m['test_top1']:.2f} [{m['test_top1_ci'][0]:.2f}, {m['test_top1_ci'][1]:.2f}]",
             _short(m["sacvit_vs_this"]) if "sacvit_vs_this" in m else "–"] for m in s.get("matched_gmacs", [])]
    out.append(_table(["target", "method", "η", "test GMACs share", "top-1 % [95% CI]", "SAC-ViT − this (pt, 95% CI)"],
                      rows))
    staged = [e for e in s["family"] if "stage_top1" in e]
    if staged:
        out.append("\n### Each method's two ends (every image exits at the first stage; every image runs to the last)\n")
        out.append(_table(
            ["method", "first stage top-1 %", "last stage top-1 %", "SAC-ViT − this, first (pt)", "SAC-ViT − this, last (pt)"],
            [[e["method"], f"{e['stage_top1']['first']:.2f}", f"{e['stage_top1']['last']:.2f}",
              *((_short(e["sacvit_vs_this_by_stage"][k]) for k in ("first", "last"))
                if "sacvit_vs_this_by_stage" in e else ("–", "–"))] for e in staged]))
    return "\n".join(out) + "\n"


def verdict(s: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    at, base, d, cal = s["at_eta"], s["test"]["baseline"], s["sacvit_vs_baseline"], s["calibration"]
    how = "certified on the calibration split" if cal["certified"] else "nothing certified on the calibration split: SAC only"
    lines = [f"\nSAC-ViT at η = {cal['threshold']:.3g} ({how}): top-1 {at['top1']:.2f}% vs "
             f"baseline {base['top1']:.2f}% ({d['diff']:+.2f} pt, 95% CI [{d['diff_low']:+.2f}, {d['diff_high']:+.2f}], "
             f"McNemar p = {d['p_value']:.3g}) at {100 * at['gmacs'] / base['gmacs']:.0f}% of the baseline's GMACs, "
             f"{100 * at['exit_share']:.0f}% exiting at EE ({base['images']} test images)."]
    for name, (value, ok) in targets(s).items():
        lines.append(f"  {'met    ' if ok else 'NOT met'}  {name}: {value:.2f}")
    return "\n".join(lines)
