"""``sacvit visualize``: Figure-5 style pictures of what a SAC-ViT chose for image files."""

from __future__ import annotations

import argparse
import sys

from .common import HelpFormatter, nonnegative

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit visualize photo.jpg scans/ --checkpoint runs/demo/sacvit/last.safetensors --out runs/viz
      one PNG per image: the input, the EE global class attention as a heat map, the target window
      (box) with the non-target tokens shaded, and the EE and final predictions with confidences.
  sacvit visualize scans/ --checkpoint runs/demo/sacvit/last.safetensors --out runs/viz --grid
      all images on one sheet, runs/viz/grid.png.

An image that exits at EE shows the window SAC would have used, dashed. Exit status as for
`sacvit predict`: 0 all read, 1 some unreadable (reported), 2 usage error or unusable checkpoint.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit visualize``."""
    p = subparsers.add_parser(
        "visualize", help="Figure-5 style PNGs: input, EE class attention, target window, predictions",
        description="Draw, for each image, what a trained SAC-ViT looked at and chose.",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    a("--checkpoint", required=True, help="SAC-ViT checkpoint written by `sacvit train`")
    a("--out", required=True, help="output folder for the PNGs")
    a("--grid", action="store_true", help="one sheet with every image instead of one PNG each")
    a("--per-row", type=int, default=2, help="images per row of the --grid sheet")
    a("--threshold", type=nonnegative, default=None,
      help="exit threshold η ≥ 0, above 1 no image exits (default: the checkpoint's)")
    a("--batch-size", type=int, default=16, help="images per batch")
    a("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="device")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..deploy.predict import find_images
    from ..deploy.pretrained import load_predictor
    from ..deploy.visualize import visualize_files

    if args.per_row < 1 or args.batch_size < 1:
        raise ValueError("--per-row and --batch-size must be ≥ 1")
    model = load_predictor(args.checkpoint, device=args.device)
    paths = find_images(args.paths)
    if not paths:
        raise ValueError(f"no image files under {' '.join(args.paths)}")
    pngs, failed = visualize_files(model, paths, args.out, grid=args.grid, per_row=args.per_row,
                                   threshold=args.threshold, batch_size=args.batch_size)
    for r in failed:
        print(f"sacvit visualize: {r.path}: {r.error}", file=sys.stderr)
    if pngs:
        print("wrote " + "  ".join(map(str, pngs)))
    if failed:
        print(f"sacvit visualize: {len(failed)} of {len(paths)} files could not be read", file=sys.stderr)
    return 1 if failed else 0
