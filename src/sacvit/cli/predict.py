"""``sacvit predict``: classify image files and folders with a trained SAC-ViT."""

from __future__ import annotations

import argparse
import json
import sys

from .common import HelpFormatter, nonnegative

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit predict photo.jpg scans/ --checkpoint runs/demo/sacvit/last.safetensors
      one row per image: top class and probability, the stage it ended in (EE or SAC), the EE
      confidence, GMACs spent, the SAC window box and the next classes.
  sacvit predict scans/ --checkpoint runs/demo/sacvit/last.safetensors --json --top-k 3 > preds.jsonl
      one JSON object per line: path, top_k [{class, index, prob}], stage, ee_confidence, gmacs,
      box, threshold — or path and error for a file that cannot be read.
  sacvit predict scans/ --onnx runs/demo/onnx --threshold 0.9
      the same with the exported ONNX graphs (sacvit export) on onnxruntime.

Folders are searched recursively for image files (by suffix); a file named on the command line is
always tried. Images are preprocessed as in evaluation, from the checkpoint's metadata. The
default threshold η is the checkpoint's (the calibrated one after `sacvit calibrate`).
Exit status: 0 when every file was read, 1 when some could not be (each is reported with its
reason, the others go on), 2 for a usage error or an unusable checkpoint.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit predict``."""
    p = subparsers.add_parser(
        "predict", help="classify image files/folders: top-k classes, exit stage, GMACs, window box",
        description="Run a trained SAC-ViT on image files and folders, batched, with the checkpoint's "
                    "own preprocessing and exit threshold.",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="SAC-ViT checkpoint written by `sacvit train`")
    src.add_argument("--onnx", metavar="DIR", help="folder written by `sacvit export` (runs on onnxruntime)")
    a("--threshold", type=nonnegative, default=None,
      help="exit threshold η ≥ 0, above 1 no image exits (default: the checkpoint's)")
    a("--top-k", type=int, default=5, help="classes reported per image")
    a("--batch-size", type=int, default=32, help="images per batch")
    a("--json", action="store_true", help="one JSON object per line instead of a table")
    a("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="device of the PyTorch model")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..deploy.predict import TABLE, find_images, predict_files
    from ..deploy.pretrained import load_predictor
    from ..report import format_table

    predictor = load_predictor(args.checkpoint, args.onnx, args.device)
    paths = find_images(args.paths)
    if not paths:
        raise ValueError(f"no image files under {' '.join(args.paths)}")
    rows, failed = [], 0
    if not args.json:
        thr = predictor.threshold if args.threshold is None else args.threshold
        print(f"{len(paths)} image{'' if len(paths) == 1 else 's'}, η = {thr:g} ({'calibrated' if _calibrated(predictor) else 'default'}); "
              f"boxes in each image's own pixels", flush=True)
    for r in predict_files(predictor, paths, threshold=args.threshold, top_k=args.top_k,
                           batch_size=args.batch_size):
        if not r.ok:
            failed += 1
            print(f"sacvit predict: {r.path}: {r.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(r.to_dict()), flush=True)
        elif r.ok:
            rows.append(r.row())
    if rows:
        print(format_table(rows, TABLE, left=2))
    if failed:
        print(f"sacvit predict: {failed} of {len(paths)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def _calibrated(predictor) -> bool:
    meta = getattr(predictor, "meta", None)
    record = meta.calibration if meta is not None else getattr(predictor, "calibration", None)
    return bool(record)
