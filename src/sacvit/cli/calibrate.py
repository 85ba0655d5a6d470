"""``sacvit calibrate``: choose the exit threshold η of a checkpoint for a budget, on held-out data."""

from __future__ import annotations

import argparse
import sys

from ..data import DATASET_NAMES, SPLITS
from .common import HelpFormatter

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors --budget-gmacs 0.05
      the most accurate η whose mean cost on the holdout split is at most 0.05 GMACs per image.
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors --max-drop 0.5
      the cheapest η at most 0.5 top-1 points below SAC-only accuracy (every image through SAC).
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors --exit-share 0.77 --dry-run
      the most accurate η that lets at least 77% of the images exit at EE; report only.

The η is chosen on the holdout split (training images never trained on), never on the test
split, and stored in the checkpoint's metadata (atomic rewrite, weights verified unchanged), so
that `sacvit predict`, `sacvit eval` and `sacvit.from_pretrained` use it by default. With --out,
the whole curve goes to OUT/calibration.csv and OUT/calibration.png.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit calibrate``."""
    p = subparsers.add_parser(
        "calibrate", help="choose η for a GMACs, accuracy-drop or exit-share budget; store it in the checkpoint",
        description="Sweep every exit threshold of a SAC-ViT checkpoint on held-out images, print the "
                    "curve, pick the η that meets the budget and store it in the checkpoint.",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, help="SAC-ViT checkpoint written by `sacvit train` (rewritten in place)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-gmacs", type=float, help="most accurate η with mean GMACs per image ≤ this")
    budget.add_argument("--max-drop", type=float,
                        help="cheapest η at most this many top-1 points below SAC-only accuracy (or --reference)")
    budget.add_argument("--exit-share", type=float, help="most accurate η with at least this share exiting at EE")
    a("--reference", type=float, default=None, help="top-1 %% that --max-drop is measured from (e.g. a baseline's)")
    a("--data", choices=DATASET_NAMES, default="cluttered-fmnist", help="dataset")
    a("--data-dir", default=None, help="dataset folder (default for Fashion-MNIST: the system copy)")
    a("--split", choices=SPLITS, default="holdout", help="split to calibrate on")
    a("--length", type=int, default=None, help="use only this many images of the split")
    a("--seed", type=int, default=0, help="layout seed of generated data (use the training seed)")
    a("--batch-size", type=int, default=64, help="batch size")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device")
    a("--dry-run", action="store_true", help="report the choice without changing the checkpoint")
    a("--out", default=None, help="also write the whole curve to OUT/calibration.csv and OUT/calibration.png")
    a("--ignore-class-names", action="store_true",
      help="match the checkpoint's classes to the data's by index even when their names differ "
           "(by default a renamed, missing or reordered class is an error)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..engine.calibrate import calibrate
    from ..report import calibration_report

    if args.split == "test":
        print("sacvit calibrate: warning: calibrating on the test split makes its results optimistic; "
              "use --split holdout", file=sys.stderr)
    result = calibrate(args.checkpoint, data=args.data, data_dir=args.data_dir, split=args.split,
                       length=args.length, seed=args.seed, budget_gmacs=args.budget_gmacs, max_drop=args.max_drop,
                       reference_top1=args.reference, exit_share=args.exit_share, batch_size=args.batch_size,
                       device=None if args.device == "auto" else args.device, write=not args.dry_run,
                       check_names=not args.ignore_class_names)
    print(calibration_report(result, args.checkpoint, args.out))
    return 0
