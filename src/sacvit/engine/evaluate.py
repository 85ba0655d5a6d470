"""Threshold sweep of a trained SAC-ViT: accuracy, exit share, GMACs and throughput per η.

Accuracy and GMACs of every threshold come from one pass over the data: each image's EE
and SAC predictions are computed once (:meth:`SACViT.predict_stages`), and
threshold η picks the EE one when the EE confidence is ≥ η — exactly :meth:`SACViT.predict`'s
rule. Throughput is measured separately with real ``predict(x, η)`` calls on the same few
batches for every row, timed after one warm-up batch.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_checkpoint

__all__ = ["evaluate", "write_results", "add_parser", "SAC_ONLY", "DEFAULT_THRESHOLDS"]

SAC_ONLY = 1.01  # above any softmax probability: every image goes through SAC
DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.76, 0.8, 0.9, 0.95)
COLUMNS = ("label", "mode", "threshold", "top1", "exit_share", "gmacs", "img_per_s", "images", "model")


def _load(model: nn.Module | str | Path, device: torch.device) -> tuple[nn.Module, str]:
    if isinstance(model, nn.Module):
        return model.to(device).eval(), type(model).__name__
    net, meta = load_checkpoint(model, map_location=device)
    return net, meta["model_name"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(fn, batches: list[Tensor], device: torch.device) -> float:
    """Images per second of ``fn(x)`` over ``batches[1:]``, after ``batches[0]`` as warm-up."""
    with torch.no_grad():
        fn(batches[0])
        timed = batches[1:] or batches
        _sync(device)
        t0 = time.perf_counter()
        for x in timed:
            fn(x)
        _sync(device)
    return sum(len(x) for x in timed) / max(time.perf_counter() - t0, 1e-9)


def _plain_gmacs(model: nn.Module, x: Tensor) -> float:
    from timm.models.vision_transformer import VisionTransformer

    from .. import flops

    if isinstance(model, VisionTransformer) and model.global_pool == "token":
        mlp_ratio = model.blocks[0].mlp.fc1.out_features / model.embed_dim
        macs = flops.vit_macs(model.patch_embed.grid_size, model.patch_embed.patch_size[0], model.embed_dim,
                              len(model.blocks), model.num_classes, mlp_ratio,
                              model.patch_embed.proj.in_channels, model.num_prefix_tokens)
    else:
        macs = flops.measure_macs(lambda: model(x[:1]))
    return macs / flops.GIGA


@torch.no_grad()
def evaluate(
    checkpoint_or_model: nn.Module | str | Path,
    dataset: Dataset,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    batch_size: int = 64,
    baseline: nn.Module | str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    workers: int = 0,
    timing_batches: int = 8,
) -> list[dict[str, Any]]:
    """Sweep the exit threshold of a SAC-ViT on ``dataset``.

    Args:
        checkpoint_or_model: a SAC-ViT, or the path of a checkpoint of one.
        dataset: ``(image, label)`` pairs at the model's input size.
        thresholds: exit thresholds η in [0, 1].
        batch_size: evaluation batch size.
        baseline: a plain ViT (or its checkpoint) to compare with, on the same data.
        device: default CUDA when available.
        workers: DataLoader workers.
        timing_batches: batches timed per row for the throughput (after one warm-up batch).

    Returns:
        One dict per row with :data:`COLUMNS`: ``mode`` is ``"sacvit"`` (one per threshold),
        ``"ee_only"`` (η = 0), ``"sac_only"`` (η = 1.01) or ``"baseline"``; ``top1`` in %,
        ``exit_share`` in [0, 1], ``gmacs`` the mean per image, ``img_per_s`` the throughput.

    Raises:
        ValueError: not a SAC-ViT, a class count that does not match the data, an empty dataset.
    """
    from ..model import SACViT

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, name = _load(checkpoint_or_model, device)
    if not isinstance(model, SACViT):
        raise ValueError(f"{checkpoint_or_model} is not a SAC-ViT ({name}); pass plain ViTs as the baseline")
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty")
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) != model.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes, the dataset {len(classes)}")
    base = _load(baseline, device) if baseline is not None else None

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    conf, ok_ee, ok_sac, g_ee, g_sac, ok_base, timing = [], [], [], [], [], [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if len(timing) <= timing_batches:
            timing.append(x)
        ee, sac = model.predict_stages(x)
        conf.append(ee.logits.softmax(-1).amax(-1))
        ok_ee.append(ee.logits.argmax(-1) == y)
        ok_sac.append(sac.logits.argmax(-1) == y)
        g_ee.append(ee.gmacs)
        g_sac.append(sac.gmacs)
        if base is not None:
            ok_base.append(base[0](x).argmax(-1) == y)
    conf, ok_ee, ok_sac, g_ee, g_sac = (torch.cat(t).cpu() for t in (conf, ok_ee, ok_sac, g_ee, g_sac))
    n = len(conf)

    rows = []
    sweep = [("sacvit", float(t)) for t in thresholds] + [("ee_only", 0.0), ("sac_only", SAC_ONLY)]
    for mode, t in sweep:
        exit_ = conf >= t
        correct = torch.where(exit_, ok_ee, ok_sac)
        label = {"ee_only": "EE only", "sac_only": "SAC only"}.get(mode, f"SAC-ViT η={t:g}")
        rows.append({"label": label, "mode": mode, "threshold": t, "top1": 100 * correct.double().mean().item(),
                     "exit_share": exit_.double().mean().item(),
                     "gmacs": torch.where(exit_, g_ee, g_sac).double().mean().item(),
                     "img_per_s": _throughput(lambda b, t=t: model.predict(b, t), timing, device),
                     "images": n, "model": name})
    if base is not None:
        net, base_name = base
        rows.append({"label": f"baseline {base_name}", "mode": "baseline", "threshold": None,
                     "top1": 100 * torch.cat(ok_base).double().mean().item(), "exit_share": None,
                     "gmacs": _plain_gmacs(net, timing[0]), "img_per_s": _throughput(net, timing, device),
                     "images": n, "model": base_name})
    return rows


def _fmt(v: Any, col: str) -> str:
    if v is None:
        return "–"
    if col == "exit_share":
        return f"{100 * v:.1f}%"
    if col == "top1":
        return f"{v:.2f}"
    if col == "gmacs":
        return f"{v:.4f}"
    if col == "img_per_s":
        return f"{v:.1f}"
    if col == "threshold":
        return f"{v:g}"
    return str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table (η, top-1 %, exit share, GMACs/image, img/s)."""
    cols = ("label", "threshold", "top1", "exit_share", "gmacs", "img_per_s")
    heads = ("", "η", "top-1 %", "exit @ EE", "GMACs/img", "img/s")
    cells = [[_fmt(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def _plot(rows: list[dict[str, Any]], path: Path, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    curve = sorted((r for r in rows if r["mode"] == "sacvit"), key=lambda r: r["gmacs"])
    if curve:
        ax.plot([r["gmacs"] for r in curve], [r["top1"] for r in curve], "o-", color="C0", label="SAC-ViT (η sweep)")
        points: dict[tuple[float, float], list] = {}
        for r in curve:  # one label per point: thresholds with (nearly) equal results share it
            key = (round(r["gmacs"] / curve[-1]["gmacs"], 2), round(r["top1"]))
            points.setdefault(key, [r["gmacs"], r["top1"]]).append(f"{r['threshold']:g}")
        for g, top1, *etas in points.values():
            ax.annotate("η=" + ",".join(etas), (g, top1), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="C0")
    for mode, marker, color in (("ee_only", "s", "C2"), ("sac_only", "^", "C3")):
        for r in rows:
            if r["mode"] == mode:
                ax.plot(r["gmacs"], r["top1"], marker, color=color, markersize=8, label=r["label"])
    for r in rows:
        if r["mode"] == "baseline":
            ax.plot(r["gmacs"], r["top1"], "*", color="k", markersize=14, label=r["label"])
            ax.axhline(r["top1"], color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("GMACs / image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs. compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict[str, Any]], out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``results.csv`` and ``accuracy_vs_gmacs.png`` to ``out_dir`` and print the table.

    Returns:
        ``{"csv": path, "png": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "results.csv", out / "accuracy_vs_gmacs.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(format_table(rows))
    _plot(rows, png_path, title)
    return {"csv": csv_path, "png": png_path}


# ---------------------------------------------------------------------------------------- CLI
def _thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be numbers in [0, 1], got {text!r}")
    return values


_EXAMPLES = """\
example:
  sacvit eval --checkpoint runs/sacvit_demo/last.safetensors \\
      --baseline runs/deit_demo/last.safetensors --thresholds 0.5,0.6,0.7,0.8,0.9 --out runs/eval_demo

Writes OUT/results.csv and OUT/accuracy_vs_gmacs.png and prints the table. Rows: one per
threshold, "EE only" (η=0), "SAC only" (η=1.01) and the baseline.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit eval``."""
    from .train import DATA_CHOICES, _HelpFormatter

    p = subparsers.add_parser(
        "eval", help="threshold sweep of a SAC-ViT checkpoint: accuracy, exit share, GMACs, img/s",
        description="Evaluate a SAC-ViT checkpoint at several exit thresholds, optionally against a "
                    "plain ViT baseline checkpoint, on the validation split.",
        epilog=_EXAMPLES, formatter_class=_HelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, help="SAC-ViT checkpoint written by `sacvit train`")
    a("--baseline", default=None, help="plain ViT checkpoint written by `sacvit train`")
    a("--model", default=None, help="fail unless the checkpoint is for this timm model name")
    a("--thresholds", type=_thresholds, default=",".join(map(str, DEFAULT_THRESHOLDS)), help="comma-separated exit thresholds η")
    a("--data", choices=DATA_CHOICES, default="cluttered-fmnist", help="dataset (validation split)")
    a("--data-dir", default=None, help="dataset folder (default for Fashion-MNIST: the system copy)")
    a("--val-length", type=int, default=None, help="use only this many validation images")
    a("--seed", type=int, default=0, help="layout seed of generated data (use the training seed)")
    a("--batch-size", type=int, default=64, help="batch size")
    a("--workers", type=int, default=0, help="DataLoader workers")
    a("--timing-batches", type=int, default=8, help="batches timed per row for img/s")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device")
    a("--out", default="runs/eval", help="output folder for results.csv and accuracy_vs_gmacs.png")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from .checkpoint import read_metadata
    from .train import build_split

    meta = read_metadata(args.checkpoint)
    if args.model and meta["model_name"] != args.model:
        raise ValueError(f"{args.checkpoint} is a checkpoint for model {meta['model_name']!r}, not {args.model!r}")
    if args.baseline:
        read_metadata(args.baseline)
    model, _ = load_checkpoint(args.checkpoint)
    img_size = model.patch_embed.img_size[0]
    dataset = build_split(args.data, args.data_dir, "val", img_size, args.val_length, args.seed)
    device = None if args.device == "auto" else args.device
    rows = evaluate(model, dataset, args.thresholds, args.batch_size, args.baseline, device=device,
                    workers=args.workers, timing_batches=args.timing_batches)
    for r in rows:
        r["model"] = meta["model_name"] if r["mode"] != "baseline" else r["model"]
    paths = write_results(rows, args.out, title=f"{meta['model_name']} on {args.data}")
    print(f"results: {paths['csv']}  plot: {paths['png']}")
    return 0
