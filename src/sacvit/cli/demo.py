"""``sacvit demo``: the options of :class:`~sacvit.demo.DemoConfig`."""

from __future__ import annotations

import argparse

from ..demo import DemoConfig, run_demo
from ..demo import __doc__ as DEMO_DOC

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit demo``."""
    d = DemoConfig()
    p = subparsers.add_parser(
        "demo", help="train SAC-ViT and its baseline on Cluttered Fashion-MNIST, sweep η, plot",
        description=DEMO_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST idx files (default /usr/share/datasets/fashion-mnist, "
                        "from Debian's dataset-fashion-mnist)")
    p.add_argument("--pretrain-length", type=int, default=d.pretrain_length,
                   help=f"training images of the 56-px pretraining (default {d.pretrain_length})")
    p.add_argument("--train-length", type=int, default=d.train_length,
                   help=f"training images of each 112-px fine-tuning (default {d.train_length})")
    p.add_argument("--val-length", type=int, default=d.val_length, help=f"validation images (default {d.val_length})")
    p.add_argument("--pretrain-epochs", type=int, default=d.pretrain_epochs,
                   help=f"epochs of the 56-px pretraining (default {d.pretrain_epochs})")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"fine-tuning epochs of the baseline and of SAC-ViT (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate of every training (default {d.lr})")
    p.add_argument("--thresholds", default=",".join(map(str, d.thresholds)),
                   help="comma-separated exit thresholds η to sweep")
    p.add_argument("--tolerance", type=float, default=d.tolerance,
                   help=f"top-1 points below the baseline that still count as matching it (default {d.tolerance})")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    try:
        thresholds = tuple(float(t) for t in args.thresholds.split(","))
    except ValueError as err:
        raise ValueError(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}") from err
    run_demo(DemoConfig(out=args.out, data_dir=args.data_dir, train_length=args.train_length,
                        pretrain_length=args.pretrain_length,
                        val_length=args.val_length, pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, thresholds=thresholds, tolerance=args.tolerance))
    return 0
