"""``sacvit demo``: the whole method on the embedded default data, on a laptop-class CPU.

The paper initialises SAC-ViT from a pretrained DeiT. No such checkpoint exists for this data and
nothing is downloaded, so the demo makes its own stand-in, in three trainings on Cluttered
Fashion-MNIST:

1. ``pretrain``: the plain demo ViT (``deit_demo_patch8_112``) at 56 px (7×7 tokens, the EE view),
   where a ViT learns several times faster per second than at 112 px;
2. ``baseline``: that ViT fine-tuned at 112 px (14×14 tokens) — the same-size full-resolution ViT;
3. ``sacvit``: SAC-ViT (``sacvit_demo_patch8_112``) fine-tuned from the same weights with the same
   recipe and budget.

Then it sweeps the exit threshold and writes under ``--out``:

* ``results.csv`` and ``accuracy_vs_gmacs.png`` — the accuracy / compute trade-off;
* ``clusters.png`` — which images exit at EE, and the target window of the others;
* ``summary.json`` — the operating point that matches the baseline's accuracy.

A second run reuses finished checkpoints, and resumes an interrupted training where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "run_demo", "pick_operating_point"]


@dataclass
class DemoConfig:
    """The demo's recipe: sized so that the whole run fits in about 20 minutes on 2 CPU cores."""

    out: str = "runs/demo"
    data_dir: str | None = None
    pretrain_epochs: int = 3
    pretrain_length: int = 60_000
    train_length: int = 24_000
    val_length: int = 2_000
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    tolerance: float = 0.5
    seed: int = 0
    sac: dict[str, Any] = field(default_factory=dict)


def _train_or_reuse(model: str, out_dir: Path, cfg: DemoConfig, epochs: int, **overrides: Any) -> Path:
    """Train ``model`` into ``out_dir``, resume an unfinished run, or reuse a finished one."""
    from .engine.checkpoint import read_metadata
    from .engine.train import CHECKPOINT, TrainConfig, train
    from .engine.train_state import has_checkpoint

    ckpt = out_dir / CHECKPOINT
    resume = ckpt.is_file() or has_checkpoint(out_dir)  # also a run killed within its first epoch
    if ckpt.is_file() and read_metadata(ckpt)["epoch"] >= epochs:
        print(f"reusing {ckpt} (trained for {epochs} epochs; delete the folder to retrain)")
        return ckpt
    print(f"{'resuming' if resume else 'training'} {model} → {out_dir}", flush=True)
    return train(TrainConfig(**{
        "model": model, "data": "cluttered-fmnist", "data_dir": cfg.data_dir,
        "train_length": cfg.train_length, "val_length": cfg.val_length, "epochs": epochs,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_epochs": 0.1, "label_smoothing": 0.0,
        "drop_path": 0.0, "seed": cfg.seed, "out_dir": str(out_dir), "resume": resume,
        "eval_every": 0, "cache_dir": str(out_dir.parent / "cache"), **overrides,
    }))


def pick_operating_point(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The cheapest SAC-ViT row within ``tolerance`` top-1 points of the baseline.

    Falls back to the most accurate SAC-ViT row when none is within the tolerance.
    """
    base = next(r for r in rows if r["mode"] == "baseline")
    sac = [r for r in rows if r["mode"] != "baseline"]
    ok = [r for r in sac if r["top1"] >= base["top1"] - tolerance]
    best = min(ok, key=lambda r: r["gmacs"]) if ok else max(sac, key=lambda r: r["top1"])
    return {
        "baseline_top1": base["top1"], "baseline_gmacs": base["gmacs"], "baseline_img_per_s": base["img_per_s"],
        "threshold": best["threshold"], "mode": best["mode"], "top1": best["top1"], "gmacs": best["gmacs"],
        "exit_share": best["exit_share"], "img_per_s": best["img_per_s"],
        "top1_gap": best["top1"] - base["top1"], "gmacs_ratio": best["gmacs"] / base["gmacs"],
        "within_tolerance": bool(ok), "tolerance": tolerance,
    }


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train both models (or reuse them), sweep η, write the table, plots and summary."""
    import torch

    from .data import DEFAULT_FMNIST_DIR
    from .engine.checkpoint import load_checkpoint
    from . import plots
    from .data import build_dataset
    from .engine.evaluate import COLUMNS, TABLE, evaluate
    from .report import format_table, write_csv
    from .viz import plot_clusters

    cfg.data_dir = cfg.data_dir or DEFAULT_FMNIST_DIR
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    pretrained = _train_or_reuse("deit_demo_patch8_112", out / "pretrain", cfg, cfg.pretrain_epochs,
                                 img_size=56, model_kwargs={"img_size": 56}, train_length=cfg.pretrain_length)
    init = str(pretrained)
    baseline = _train_or_reuse("deit_demo_patch8_112", out / "baseline", cfg, cfg.epochs, init=init)
    sacvit = _train_or_reuse("sacvit_demo_patch8_112", out / "sacvit", cfg, cfg.epochs, init=init,
                             sac=dict(cfg.sac))

    val = build_dataset("cluttered-fmnist", cfg.data_dir, "test", 112, length=cfg.val_length, seed=cfg.seed,
                        prerender=True, cache_dir=out / "cache")
    rows = evaluate(sacvit, val, thresholds=cfg.thresholds, baseline=baseline)
    print(format_table(rows, TABLE))
    write_csv(out / "results.csv", rows, COLUMNS)
    plots.accuracy_vs_gmacs(rows, out / "accuracy_vs_gmacs.png", "SAC-ViT vs same-size ViT on Cluttered Fashion-MNIST")

    model, meta = load_checkpoint(sacvit)
    summary = pick_operating_point(rows, cfg.tolerance)
    raw = build_dataset("cluttered-fmnist", cfg.data_dir, "test", 112, length=12, seed=cfg.seed)  # first 12
    images = torch.stack([raw[i][0] for i in range(12)])
    # the figure shows both stages: the sweep threshold whose exit share is closest to one half
    shown = min((r for r in rows if r["mode"] == "sacvit"), key=lambda r: abs(r["exit_share"] - 0.5))
    plot_clusters(model, images, [raw.raw(i) for i in range(12)], out / "clusters.png",
                  threshold=shown["threshold"], labels=[raw[i][1] for i in range(12)],
                  class_names=meta["class_names"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    verdict = "within" if summary["within_tolerance"] else "NOT within"
    print(f"\nη = {summary['threshold']}: top-1 {summary['top1']:.2f}% vs baseline {summary['baseline_top1']:.2f}% "
          f"({verdict} {cfg.tolerance} pt) at {100 * summary['gmacs_ratio']:.0f}% of the baseline's GMACs "
          f"({summary['exit_share']:.0%} exit at EE).")
    print(f"wrote {out}/results.csv, accuracy_vs_gmacs.png, clusters.png, summary.json")
    return summary
