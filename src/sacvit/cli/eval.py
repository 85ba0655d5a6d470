"""``sacvit eval``: the threshold sweep of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse

from .. import plots
from ..data import build_dataset, recorded_source
from ..data.classes import IGNORE_HINT, check_class_names, count_images, describe_data
from ..devices import resolve_device
from ..io.checkpoint import load_checkpoint, read_metadata
from ..engine.evaluate import COLUMNS, DEFAULT_THRESHOLDS, evaluate
from ..report import SWEEP_TABLE, format_table, write_csv
from .common import HelpFormatter, add_data_options, checkpoint_eta, thresholds

__all__ = ["add_parser"]

_EXAMPLES = """\
example:
  sacvit eval --checkpoint runs/sacvit_demo/last.safetensors \\
      --baseline runs/deit_demo/last.safetensors --thresholds 0.5,0.6,0.7,0.8,0.9 --out runs/eval_demo

Writes OUT/results.csv, OUT/accuracy_vs_gmacs.png and OUT/per_stage.png and prints the table:
one row per threshold, "EE only" (η=0), "SAC only" (η=1.01) and the baseline, with the 95%
interval of each top-1, the exit share and the accuracy of the images that exit / go through SAC.
--data, --data-dir and --seed default to what the checkpoint was trained on.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit eval``."""
    p = subparsers.add_parser(
        "eval", help="threshold sweep of a SAC-ViT checkpoint: accuracy, exit share, GMACs, img/s",
        description="Evaluate a SAC-ViT checkpoint at several exit thresholds, optionally against a "
                    "plain ViT baseline checkpoint, on one split of a dataset (default: the test split).",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, help="SAC-ViT checkpoint written by `sacvit train`")
    a("--baseline", default=None, help="plain ViT checkpoint written by `sacvit train`")
    a("--model", default=None, help="fail unless the checkpoint is for this timm model name")
    a("--thresholds", type=thresholds, default=None,
      help=f"comma-separated exit thresholds η (default: {','.join(map(str, DEFAULT_THRESHOLDS))} and the "
           f"checkpoint's calibrated η, if `sacvit calibrate` stored one)")
    add_data_options(p, "test", "split to evaluate on")
    a("--workers", type=int, default=0, help="DataLoader workers")
    a("--timing-batches", type=int, default=8, help="batches timed per row for img/s (0: no timing)")
    a("--out", default="runs/eval", help="output folder for results.csv and the plots")
    a("--ignore-class-names", action="store_true",
      help="match the checkpoint's classes to the data's by index even when their names differ "
           "(by default a renamed, missing or reordered class is an error)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    meta = read_metadata(args.checkpoint)
    if args.model and meta.model_name != args.model:
        raise ValueError(f"{args.checkpoint} is a checkpoint for model {meta.model_name!r}, not {args.model!r}")
    if args.baseline:
        read_metadata(args.baseline)
    model, _ = load_checkpoint(args.checkpoint)
    img_size = model.patch_embed.img_size[0]
    data, data_dir, seed, holdout = recorded_source(meta.data, args.data, args.data_dir, args.seed)
    dataset = build_dataset(data, data_dir, args.split, img_size, length=args.length, seed=seed, holdout=holdout)
    described = describe_data(data, data_dir, args.split)
    if not args.ignore_class_names:  # by name, before the long passes
        check_class_names(meta.class_names, dataset.classes, f"{args.checkpoint} vs {described}", IGNORE_HINT)
        if args.baseline:
            check_class_names(read_metadata(args.baseline).class_names, dataset.classes,
                              f"{args.baseline} vs {described}", IGNORE_HINT)
    device = None if args.device == "auto" else args.device
    calibrated = meta.threshold if meta.calibration else None
    chosen = args.thresholds or sorted({*DEFAULT_THRESHOLDS, *([calibrated] if calibrated is not None else [])})
    eta = checkpoint_eta(meta)
    print(f"eval: {args.checkpoint} ({meta.model_name}, {len(meta.class_names)} classes, {eta})"
          f"{' and baseline ' + args.baseline if args.baseline else ''}\n"
          f"      on {described.removeprefix('--data ')}: {count_images(len(dataset))}, "
          f"{len(chosen)} threshold{'s' if len(chosen) != 1 else ''}, device {resolve_device(args.device)}", flush=True)
    rows = evaluate(model, dataset, chosen, args.batch_size, args.baseline, device=device,
                    workers=args.workers, timing_batches=args.timing_batches, check_names=False)
    for r in rows:
        r["model"] = meta.model_name if r["mode"] != "baseline" else r["model"]
    print(f"split: {args.split}, {count_images(len(dataset))} of {describe_data(data, data_dir).removeprefix('--data ')}, "
          f"checkpoint {eta}")
    print(format_table(rows, SWEEP_TABLE))
    title = f"{meta.model_name} on {data} ({args.split}, {len(dataset)} images)"
    paths = [write_csv(f"{args.out}/results.csv", rows, COLUMNS),
             plots.accuracy_vs_gmacs(rows, f"{args.out}/accuracy_vs_gmacs.png", title, chosen=calibrated),
             plots.per_stage(rows, f"{args.out}/per_stage.png", title)]
    print("wrote " + "  ".join(map(str, paths)))
    return 0
