"""``sacvit standin``: re-create the demo's stand-in for DeiT (:mod:`sacvit.standin`)."""

from __future__ import annotations

import argparse
import dataclasses

from ..demo.standin import StandinRecipe, make_standin
from .common import HelpFormatter

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit standin --out runs/standin             # 102 min on 2 CPU cores (README); resumable
  sacvit standin --out runs/standin --install   # and replace the stand-in shipped in the package
  sacvit demo --standin runs/standin/standin.safetensors
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit standin``."""
    d = StandinRecipe()
    p = subparsers.add_parser(
        "standin", help="train the demo's stand-in for DeiT: a plain ViT at full resolution, from scratch",
        description="Train the plain demo ViT at 112 px on the Cluttered Fashion-MNIST train split until it "
                    "stops improving, and write standin.safetensors + standin.json (recipe, command, held-out "
                    "curve, SHA-256).", epilog=_EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/standin", help="output folder (the run resumes there)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the system copy)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--install", action="store_true", help="copy the result into the package (what ships)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    recipe = dataclasses.replace(StandinRecipe(), epochs=args.epochs)
    path = make_standin(args.out, recipe, data_dir=args.data_dir, install=args.install)
    print(f"stand-in: {path}")
    return 0
