"""Charts of every command (PNG via matplotlib's Agg backend; nothing needs a display).

* :func:`accuracy_vs_gmacs` — the η sweep of ``sacvit eval`` / ``demo`` against the baseline;
* :func:`per_stage` — Figure 4 style: exit share and the accuracy of the exited / SAC images per η;
* :func:`accuracy_vs_throughput` — SAC-ViT, ToMe and EViT on the same baseline weights;
* :func:`ablations` — Figure 3 style: each design removed in turn;
* :func:`training_curves` — held-out accuracy over training;
* :func:`bench` — throughput vs GMACs and speedup vs FLOPs ratio of ``sacvit bench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["accuracy_vs_gmacs", "per_stage", "accuracy_vs_throughput", "ablations", "training_curves", "bench"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    fig.clf()
    _pyplot().close(fig)
    return path


def _yerr(rows: Sequence[dict[str, Any]]) -> list[list[float]] | None:
    if not all(r.get("top1_low") is not None for r in rows):
        return None
    return [[r["top1"] - r["top1_low"] for r in rows], [r["top1_high"] - r["top1"] for r in rows]]


def accuracy_vs_gmacs(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None,
                      chosen: float | None = None) -> Path:
    """Top-1 (with its 95% interval when the rows have one) against mean GMACs per image.

    Rows with ``mode`` ``"sacvit"`` form the η curve; ``"ee_only"``, ``"sac_only"`` and
    ``"baseline"`` rows are single points; ``chosen`` marks the calibrated threshold.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 4.8))
    curve = sorted((r for r in rows if r["mode"] == "sacvit"), key=lambda r: r["gmacs"])
    if curve:
        ax.errorbar([r["gmacs"] for r in curve], [r["top1"] for r in curve], yerr=_yerr(curve), fmt="o-",
                    color="C0", capsize=2, markersize=4, label="SAC-ViT (η sweep)")
        span = max(r["gmacs"] for r in rows) - min(r["gmacs"] for r in rows) or 1.0
        groups: list[list[dict[str, Any]]] = []
        for r in curve:  # one label per cluster of nearby points, so that labels do not overlap
            if groups and r["gmacs"] - groups[-1][0]["gmacs"] < 0.12 * span and abs(r["top1"] - groups[-1][0]["top1"]) < 1.0:
                groups[-1].append(r)
            else:
                groups.append([r])
        for group in groups:
            etas = [f"{r['threshold']:.3g}" for r in group]
            ax.annotate("η=" + (etas[0] if len(etas) == 1 else f"{etas[0]}…{etas[-1]}"),
                        (group[0]["gmacs"], group[0]["top1"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="C0")
        for r in curve:
            if chosen is not None and abs(r["threshold"] - chosen) < 1e-9:
                ax.plot(r["gmacs"], r["top1"], "o", markersize=13, markerfacecolor="none", markeredgecolor="C1",
                        markeredgewidth=2, label=f"η={chosen:.3g} (calibrated on held-out data)")
    for mode, marker, color in (("ee_only", "s", "C2"), ("sac_only", "^", "C3")):
        for r in rows:
            if r["mode"] == mode:
                ax.errorbar(r["gmacs"], r["top1"], yerr=_yerr([r]), fmt=marker, color=color, capsize=2,
                            markersize=8, label=r["label"])
    for r in rows:
        if r["mode"] == "baseline":
            ax.errorbar(r["gmacs"], r["top1"], yerr=_yerr([r]), fmt="*", color="k", capsize=2, markersize=14,
                        label=r["label"])
            ax.axhline(r["top1"], color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("GMACs / image")
    ax.set_ylabel("top-1 accuracy (%)" + (" ± 95% CI" if _yerr(list(rows)) else ""))
    ax.set_title(title or "accuracy vs. compute", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    return _save(fig, path)


def per_stage(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Figure 4 style: per η, the EE exit share, the accuracy of the images that exit at EE and of
    those that go on to SAC, and the mean GMACs."""
    plt = _pyplot()
    curve = sorted((r for r in rows if r["mode"] == "sacvit"), key=lambda r: r["threshold"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    etas = [r["threshold"] for r in curve]
    ax1.plot(etas, [100 * r["exit_share"] for r in curve], "o-", color="C2", label="exit at EE (%)")
    ax1.plot(etas, [r["top1_exited"] if r["top1_exited"] is not None else float("nan") for r in curve], "s-",
             color="C0", label="top-1 of the exited images")
    ax1.plot(etas, [r["top1_sac"] if r["top1_sac"] is not None else float("nan") for r in curve], "^-",
             color="C3", label="top-1 of the images through SAC")
    ax1.plot(etas, [r["top1"] for r in curve], "k.--", label="top-1 of all images")
    ax1.set_xlabel("threshold η")
    ax1.set_ylabel("%")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title("where the images end, and how well", fontsize=10)
    ax2.plot(etas, [r["gmacs"] for r in curve], "o-", color="C1")
    for r in rows:
        if r["mode"] == "baseline":
            ax2.axhline(r["gmacs"], color="k", linestyle="--", linewidth=0.8, label=r["label"])
            ax2.legend(fontsize=8)
    ax2.set_xlabel("threshold η")
    ax2.set_ylabel("mean GMACs / image")
    ax2.grid(alpha=0.3)
    ax2.set_title("compute", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_throughput(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Top-1 against measured throughput for each method (rows with ``method``, ``img_s``, ``top1``
    in %, optional ``top1_low``/``top1_high`` and ``setting`` labels)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    markers = {"deit": "*", "sacvit": "o", "tome": "s", "evit": "^", "deit-ee": "P"}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == method and r.get("top1") is not None), key=lambda r: r["img_s"])
        if not rs:
            continue
        ax.errorbar([r["img_s"] for r in rs], [r["top1"] for r in rs], yerr=_yerr(rs),
                    fmt=markers.get(method, "o") + "-", capsize=2, markersize=10 if method == "deit" else 6,
                    label=method)
        for r in rs:
            ax.annotate(str(r.get("setting", "")).split(" (")[0], (r["img_s"], r["top1"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    return _finish(fig, ax, path, "throughput (img/s)", "top-1 accuracy (%)", title or "accuracy vs. throughput")


def _finish(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, grid, legend and title of a one-axes figure, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def ablations(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Figure 3 style: top-1 (95% interval) and GMACs of each variant, the full method first."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.6), sharey=True)
    labels = [r["label"] for r in rows]
    ys = list(range(len(rows)))[::-1]
    err = _yerr(rows)
    ax1.barh(ys, [r["top1"] for r in rows], xerr=err, color=["C0"] + ["C7"] * (len(rows) - 1), capsize=3)
    lo = min(r.get("top1_low", r["top1"]) for r in rows)
    ax1.set_xlim(max(0.0, lo - 5), min(100.0, max(r.get("top1_high", r["top1"]) for r in rows) + 2))
    ax1.set_yticks(ys, labels, fontsize=8)
    ax1.set_xlabel("top-1 % (95% CI)")
    ax1.grid(alpha=0.3, axis="x")
    ax2.barh(ys, [r["gmacs"] for r in rows], color=["C1"] + ["C7"] * (len(rows) - 1))
    ax2.set_xlabel("mean GMACs / image")
    ax2.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(curves: dict[str, Sequence[tuple[float, float]]], path: str | Path,
                    title: str | None = None, xlabel: str = "training images seen") -> Path:
    """Held-out top-1 over training, one line per run: ``{label: [(x, top1 %), …]}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", markersize=3, label=label)
    return _finish(fig, ax, path, xlabel, "held-out top-1 (%)", title or "validation curves (held-out split)")


def bench(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """``sacvit bench``: throughput vs GMACs, and measured speedup vs FLOPs ratio (realisation)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = {"deit": "*", "deit-ee": "P", "sacvit": "o", "tome": "s", "evit": "^"}
    for method, runtime in dict.fromkeys((r["method"], r.get("runtime", "eager")) for r in rows):
        rs = sorted((r for r in rows if r["method"] == method and r.get("runtime", "eager") == runtime and r["gmacs"]),
                    key=lambda r: r["gmacs"])
        if not rs:
            continue
        kw = dict(marker=markers.get(method, "o"), label=method if runtime == "eager" else f"{method} ({runtime})",
                  markersize=9 if method == "deit" else 6, fillstyle="full" if runtime == "eager" else "none")
        ax1.plot([r["gmacs"] for r in rs], [r["img_s"] for r in rs], **kw)
        ax2.plot([r["flops_ratio"] for r in rs], [r["speedup"] for r in rs], linestyle="", **kw)
        for r in rs:
            ax1.annotate(r["setting"].split(" (")[0], (r["gmacs"], r["img_s"]), fontsize=7,
                         textcoords="offset points", xytext=(4, 3))
    ax1.set_xlabel("GMACs / image")
    ax1.set_ylabel(f"throughput, img/s (batch {rows[0]['batch']})")
    ax1.set_title("throughput vs compute")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    top = max([r["flops_ratio"] or 1 for r in rows] + [r["speedup"] for r in rows]) * 1.1
    ax2.plot([0, top], [0, top], color="gray", linewidth=1, label="realisation 100%")
    ax2.plot([0, top], [0, 0.85 * top], color="gray", linewidth=1, linestyle="--", label="85%")
    ax2.set_xlim(0, top)
    ax2.set_ylim(0, top)
    ax2.set_xlabel("FLOPs ratio (baseline GMACs / GMACs)")
    ax2.set_ylabel("measured speedup")
    ax2.set_title("realisation = speedup / FLOPs ratio")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def family(curves: dict[str, Sequence[dict[str, Any]]], points: Sequence[dict[str, Any]], path: str | Path,
           title: str | None = None, peers: Sequence[dict[str, Any]] = ()) -> Path:
    """Figure 1 of the paper: top-1 against GMACs, one curve per method over its η sweep.

    ``curves`` maps a method to its sweep rows (``gmacs``, ``top1``); ``points`` are the operating
    points to mark (``method``, ``gmacs``, ``top1``, optional ``top1_low``/``top1_high``, ``certified``):
    a filled marker when certified, hollow when not; ``peers`` (ToMe, EViT, the baseline, the 56-px ViT) are
    drawn as labelled points.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    colors = {m: f"C{i}" for i, m in enumerate(curves)}
    for method, rows in curves.items():
        rs = sorted(rows, key=lambda r: r["gmacs"])
        ax.plot([r["gmacs"] for r in rs], [r["top1"] for r in rs], "-", color=colors[method], lw=1.4, label=method)
    for p in points:
        c = colors.get(p["method"], "k")
        ax.errorbar([p["gmacs"]], [p["top1"]], yerr=_yerr([p]), fmt="o", markersize=9, capsize=3, color=c,
                    markerfacecolor=c if p.get("certified") else "white", markeredgewidth=1.6)
    markers = {"deit": "*", "baseline": "*", "tome": "s", "evit": "^", "plain ViT 56 px": "D"}
    for method in dict.fromkeys(r["method"] for r in peers):
        rs = sorted((r for r in peers if r["method"] == method), key=lambda r: r["gmacs"])
        ax.plot([r["gmacs"] for r in rs], [r["top1"] for r in rs], markers.get(method, "x"), color="0.35",
                markersize=11 if markers.get(method) == "*" else 6, linestyle=":" if len(rs) > 1 else "none",
                label=method)
    ax.plot([], [], "o", color="0.3", label="η certified (filled) / not (hollow)")
    return _finish(fig, ax, path, "GMACs per image", "top-1 accuracy (%)",
                   title or "the adaptive-ViT family: accuracy vs. compute")
