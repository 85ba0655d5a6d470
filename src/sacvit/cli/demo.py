"""``sacvit demo``: the options of :class:`~sacvit.demo.DemoConfig`."""

from __future__ import annotations

import argparse

from ..demo import PIPELINE_DOC, PRESETS, DemoConfig, run_demo
from .common import HelpFormatter, json_dict, nonnegative, number_list, positive_int

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit demo                                   # what `make demo` runs (preset demo, 8–10 min on 2 cores from a fresh clone)
  sacvit demo --preset full --out runs/full     # the README's headline numbers (76.7 min on 2 cores, resumable)
  sacvit demo --preset full --family cfvit,lfvit,dvt --out runs/full          # the same, then the family (README: timings)
  sacvit demo --preset full --epochs 4 --out runs/full4 && sacvit demo --preset full --out runs/full --against runs/full4   # is the budget enough?
  sacvit demo --ablations                       # also the Figure-3 set (22.9 min in all on 2 cores)
  sacvit demo --family cfvit,lfvit,dvt          # also SAC-ViT's predecessors, same protocol (Figure 1)
  sacvit demo --sac '{"window": 4}' --out runs/demo_m4
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit demo``."""
    d = DemoConfig()
    p = subparsers.add_parser(
        "demo", help="fine-tune SAC-ViT and its baselines from one stand-in, calibrate η, report with 95%% CIs",
        description=PIPELINE_DOC, epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--out", default=d.out, help="output folder")
    a("--preset", choices=tuple(PRESETS), default=d.preset, help="training budget: demo (8–10 min) or full (76.7 min; 2 cores, README)")
    a("--epochs", type=positive_int, default=None,
      help="fine-tuning epochs of every compared model (default: the preset's — "
        + ", ".join(f"{preset.epochs} for {name}" for name, preset in PRESETS.items()) + "); "
           "another budget needs another --out folder")
    a("--against", default=None, metavar="OTHER_OUT",
      help="another demo output folder trained with another --epochs: set each compared model against its "
           "namesake there on the validation split (the convergence check, in the report)")
    a("--data-dir", default=None,
      help="folder with the Fashion-MNIST idx files (default /usr/share/datasets/fashion-mnist, from Debian's "
           "dataset-fashion-mnist)")
    a("--standin", default=None, help="stand-in checkpoint to fine-tune from (default: the one shipped in sacvit)")
    a("--sac", type=json_dict, default=d.sac,
      help="SACConfig overrides for SAC-ViT (the demo's window side 3 was chosen on validation data), "
           "e.g. '{\"window\": 5}'")
    a("--tolerance", type=nonnegative, default=d.tolerance,
      help="η = the cheapest threshold certified within this many points of the baseline's top-1 on the calibration split")
    a("--thresholds", type=number_list(float, 0.0, 1.0), default=list(d.thresholds),
      help="η sweep reported on the test split (the calibrated η is added)")
    a("--ablations", action="store_true", help="also train and report each design removed in turn (Figure 3)")
    a("--family", type=_family, default=None,
      help="predecessors to train and compare under the same protocol (Figure 1): a comma-separated subset of "
           "cfvit,lfvit,dvt, or none (default: none; in an existing --out folder only the missing ones train), "
           "e.g. --family cfvit,lfvit")
    a("--no-bench", dest="bench", action="store_false", help="skip the wall-clock benchmark of the trained models")
    a("--seed", type=int, default=d.seed, help="seed of every training and of the data layout")
    p.set_defaults(func=_run)
    return p


def _family(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip() and t.strip() != "none")
    bad = sorted(set(names) - {"cfvit", "lfvit", "dvt"})
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from cfvit, lfvit, dvt (or none)")
    return names


def _run(args: argparse.Namespace) -> int:
    run_demo(DemoConfig(out=args.out, preset=args.preset, data_dir=args.data_dir, standin=args.standin, sac=args.sac,
                        tolerance=args.tolerance, thresholds=tuple(args.thresholds), ablations=args.ablations,
                        bench=args.bench, seed=args.seed, family=args.family,
                        against=args.against, overrides={} if args.epochs is None else {"epochs": args.epochs}))
    return 0
