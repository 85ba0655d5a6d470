"""``sacvit calibrate``: choose the exit threshold η of a checkpoint for a budget, on held-out data."""

from __future__ import annotations

import argparse
import json
import sys

from ..engine.calibrate import RULES, TESTS
from .common import HelpFormatter, add_data_options, nonnegative, open_unit_interval, positive, unit_interval

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors
      the cheapest η certified to lose at most 0.5 top-1 points against SAC only (every image
      through SAC) with probability ≥ 95%, on the calibration split of the checkpoint's data.
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors --max-drop 0.5 --delta 0.05 \\
      --reference-checkpoint runs/demo/baseline/last.safetensors --json
      certified against the baseline ViT on the same images; one JSON object on stdout.
  sacvit calibrate --checkpoint runs/sacvit/last.safetensors --data imagefolder --data-dir unlabelled/ \\
      --agreement
      label-free: at most 0.5% of images may exit with an answer other than SAC only's.
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors --budget-gmacs 0.05
      the most accurate η whose mean cost on the calibration split is at most 0.05 GMACs per image.
  sacvit calibrate --checkpoint runs/demo/sacvit/last.safetensors --exit-share 0.77 --dry-run
      the most accurate η that lets at least 77% of the images exit at EE; report only.

The guarantee of the certified rule (the default): with probability ≥ 1 − δ over the calibration
images, and for images drawn like them, top-1 at η is at most ε below the reference's (Learn then
Test: every η from SAC only towards "everything exits" is tested in a fixed sequence, the first
one not rejected stops the scan). When nothing can be certified, the checkpoint keeps its η, the
best one-sided bound reached is printed and the exit status is 2. `--rule estimate` is the old
point-estimate rule (no guarantee: its η is more than ε worse about half of the time).

η is chosen on the calibration split (images never trained on nor used to select the model;
for Fashion-MNIST data drawn with the test split from one pool), never on the test split, and stored in the checkpoint's metadata (atomic rewrite, weights verified unchanged), so that
`sacvit predict`, `sacvit eval`, `sacvit export` and `sacvit.from_pretrained` use it. --data,
--data-dir and --seed default to what the checkpoint was trained on. With --out, the whole curve
goes to OUT/calibration.csv and OUT/calibration.png.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit calibrate``."""
    p = subparsers.add_parser(
        "calibrate", help="choose η for a GMACs, accuracy-drop or exit-share budget; store it in the checkpoint",
        description="Sweep every exit threshold of a SAC-ViT checkpoint on calibration images, print the "
                    "curve, pick the η that meets the budget and store it in the checkpoint.",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, help="SAC-ViT checkpoint written by `sacvit train` (rewritten in place)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", type=nonnegative, metavar="EPS",
                        help="ε: cheapest η at most EPS top-1 points below the reference (default budget: 0.5)")
    budget.add_argument("--budget-gmacs", type=positive, help="most accurate η with mean GMACs per image ≤ this")
    budget.add_argument("--exit-share", type=unit_interval, help="most accurate η with at least this share exiting at EE")
    a("--delta", type=open_unit_interval, default=0.05, help="δ: the guarantee holds with probability ≥ 1 − δ")
    a("--rule", choices=RULES, default="certified",
      help="certified (finite-sample guarantee) or estimate (point estimate, no guarantee)")
    a("--test", choices=TESTS, default="betting",
      help="the certified rule's test: betting (Waudby-Smith–Ramdas) or exact (binomial on discordant pairs)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference-checkpoint", default=None, metavar="B",
                     help="measure the drop from this checkpoint (e.g. the baseline) on the same images "
                          "(default: the same model with every image through SAC)")
    ref.add_argument("--agreement", action="store_true",
                     help="label-free: bound the share of exits that disagree with SAC only (no labels used)")
    a("--json", action="store_true", help="print one JSON object (threshold, certified, rule, bound, …) and nothing else")
    add_data_options(p, "calibration", "split to calibrate on (default: calibration)")
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
              "use --split calibration (the default)", file=sys.stderr)
    result = calibrate(args.checkpoint, data=args.data, data_dir=args.data_dir, split=args.split,
                       length=args.length, seed=args.seed, budget_gmacs=args.budget_gmacs, max_drop=args.max_drop,
                       delta=args.delta, rule=args.rule, test=args.test,
                       reference_checkpoint=args.reference_checkpoint, agreement=args.agreement,
                       exit_share=args.exit_share, batch_size=args.batch_size,
                       device=None if args.device == "auto" else args.device, write=not args.dry_run,
                       check_names=not args.ignore_class_names,
                       log=None if args.json else lambda line: print(line, flush=True))
    if args.json:
        print(json.dumps({**result.choice.to_dict(), "stored": result.written}))
    else:
        print(calibration_report(result, args.checkpoint, args.out))
    if result.choice.rule == "certified" and not result.choice.certified:
        return 2
    return 0
