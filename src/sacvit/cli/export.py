"""``sacvit export``: a SAC-ViT checkpoint as two ONNX graphs for onnxruntime."""

from __future__ import annotations

import argparse

from .common import HelpFormatter

__all__ = ["add_parser"]

_EXAMPLES = """\
examples:
  sacvit export --checkpoint runs/demo/sacvit/last.safetensors --out runs/demo/onnx
      writes ee.onnx, sac.onnx and sacvit.json, then checks onnxruntime against PyTorch.
  sacvit predict scans/ --onnx runs/demo/onnx
      classify images with the exported graphs.

In Python:  from sacvit.runtime import OnnxSACViT
            pred = OnnxSACViT("runs/demo/onnx").predict(images, threshold=0.8)
The EE graph maps images to EE logits, confidence, GCA, window and the tensors SAC reuses; the
SAC graph maps images + those tensors to SAC logits. Both have a dynamic batch axis; the exit
decision and batch compaction run on the host. Window clustering mode only (the adaptive mode is
refused). Needs the onnx extra: pip install 'sacvit[onnx]'.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit export``."""
    p = subparsers.add_parser(
        "export", help="export a SAC-ViT checkpoint to two ONNX graphs (EE stage, SAC stage) + JSON",
        description="Export a trained SAC-ViT to ONNX: the EE stage and the SAC stage as two graphs with a "
                    "dynamic batch axis, and a JSON with η, geometry, class names and preprocessing.",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, help="SAC-ViT checkpoint written by `sacvit train`")
    a("--out", required=True, help="output folder")
    a("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    a("--no-check", dest="check", action="store_false",
      help="skip the onnxruntime-vs-PyTorch check on random images")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..deploy.export import check_export, export_onnx
    from ..deploy.pretrained import load_predictor

    model = load_predictor(args.checkpoint)
    path = export_onnx(model, args.out, opset=args.opset)
    print(f"wrote {path.parent / 'ee.onnx'}  {path.parent / 'sac.onnx'}  {path}")
    if args.check:
        print(check_export(model, path.parent))
    return 0
