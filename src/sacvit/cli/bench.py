"""``sacvit bench``: the options of :class:`~sacvit.bench.BenchConfig`."""

from __future__ import annotations

import argparse
import dataclasses

from ..bench.run import DEFAULT_METHODS, MEMBERS, METHODS, RUNTIMES, BenchConfig, run
from ..data import DATASET_NAMES, SPLITS
from .common import number_list

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  sacvit bench --out runs/bench
      DeiT-S geometry (224/112 px), random weights and images, batch 64 on CPU: DeiT at 224 and
      112 px, SAC-ViT at exit shares 0.9/0.77/0.5, ToMe r=4,8,13, EViT keep=0.9,0.7,0.5.
  sacvit bench --exit-share 0.77 --methods deit,sacvit --profile --repeats 20 --threads 8
      only the baseline and SAC-ViT at the paper's exit share, plus the per-part time split.
  sacvit bench --checkpoint runs/demo/sacvit/last.safetensors \\
      --baseline-checkpoint runs/demo/baseline/last.safetensors --data cluttered-fmnist \\
      --data-dir /usr/share/datasets/fashion-mnist --limit 2000 --thresholds 0.6,0.76,0.9
      trained models: timing on dataset images, plus top-1 on 2000 validation images.
  sacvit bench --methods deit,sacvit --exit-share 0.77 --runtime torch,ort --threads 2 --interleave
      eager PyTorch and onnxruntime (DeiT as one graph, SAC-ViT as its two) on the same images.
  sacvit bench --model sacvit_demo_patch8_112 --methods deit,sacvit,cfvit,lfvit,dvt,tome,evit --interleave
      the adaptive-ViT family side by side in one interleaved run (demo geometry, the same weights
      in every method; pass --checkpoint and --member-checkpoint METHOD=PATH for trained ones).
  sacvit bench --device cuda --amp bf16 --compile --batch 256
      GPU run (synchronised timing), bf16 autocast, torch.compile'd models.
  sacvit bench --model sacvit_demo_patch8_112 --depth 2 --embed-dim 32 --batch 4 --repeats 2
      a seconds-long smoke test.

Outputs under --out: bench.csv, bench.json (environment, config, every raw timing), bench.png
(throughput vs GMACs; speedup vs FLOPs ratio) and, with --profile, profile.txt.
realisation = speedup / FLOPs ratio: the share of the FLOPs saving that became wall-clock speed.
"""


def _member_checkpoint(text: str) -> tuple[str, str]:
    method, sep, path = text.partition("=")
    if not sep or method not in MEMBERS or not path:
        raise argparse.ArgumentTypeError(f"expected METHOD=PATH with METHOD one of {', '.join(MEMBERS)}, got {text!r}")
    return method, path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit bench``."""
    p = subparsers.add_parser(
        "bench",
        help="wall-clock throughput/latency of SAC-ViT vs DeiT, ToMe and EViT on one backbone",
        description="Measure whether FLOPs savings become wall-clock speed: throughput (img/s at "
                    "--batch) and batch-1 latency of the plain ViT at full and EE resolution, "
                    "SAC-ViT at several exit thresholds/shares, ToMe and EViT — same weights, same "
                    "images — with GMACs, speedup, FLOPs ratio and realisation (speedup / FLOPs ratio).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model (default: random weights)")
    g.add_argument("--model", default="sacvit_deit_small_patch16_224",
                   help="registered SAC-ViT variant to build with random weights, e.g. "
                        "sacvit_deit_small_patch16_224 (default) or sacvit_demo_patch8_112")
    g.add_argument("--depth", type=int, help="override the number of blocks, e.g. --depth 2 for a quick run")
    g.add_argument("--embed-dim", type=int, help="override the token width, e.g. --embed-dim 32")
    g.add_argument("--num-heads", type=int, help="override the attention heads (must divide the width), e.g. 2")
    g.add_argument("--num-classes", type=int, help="override the classifier size, e.g. --num-classes 10")
    g.add_argument("--checkpoint", help="trained SAC-ViT checkpoint (.safetensors from sacvit train) "
                                        "instead of random weights, e.g. runs/demo/sacvit/last.safetensors")
    g.add_argument("--baseline-checkpoint",
                   help="trained plain-ViT checkpoint for the deit/ToMe/EViT rows (needs --checkpoint; "
                        "without it those rows use the SAC-ViT's own backbone weights), "
                        "e.g. runs/demo/baseline/last.safetensors")
    g = p.add_argument_group("data (default: random images)")
    g.add_argument("--data", choices=DATASET_NAMES,
                   help="labelled dataset: timing uses its first --batch images and top-1 is reported, "
                        "e.g. --data cluttered-fmnist")
    g.add_argument("--data-dir", help="dataset folder, e.g. /usr/share/datasets/fashion-mnist")
    g.add_argument("--split", default="test", choices=SPLITS, help="dataset split (default test), e.g. --split holdout")
    g.add_argument("--limit", type=int, default=1000,
                   help="evaluate top-1 on the first N images (default 1000), e.g. --limit 2000")
    g.add_argument("--ignore-class-names", action="store_true",
                   help="with --checkpoint: score by class index even when the checkpoint's class names differ "
                        "from the data's (by default that is an error), e.g. --ignore-class-names")
    g = p.add_argument_group("what to run")
    g.add_argument("--methods", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                   default=list(DEFAULT_METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)}; "
                        "the deit baseline always runs; cfvit/lfvit/dvt: SAC-ViT's predecessors with real exit), "
                        "e.g. --methods deit,sacvit,cfvit,lfvit,dvt,tome,evit")
    g.add_argument("--member-checkpoint", dest="member_checkpoints", action="append", default=[],
                   metavar="METHOD=PATH", type=_member_checkpoint,
                   help="trained checkpoint of a predecessor's rows (repeatable; without it the row runs the "
                        "SAC-ViT's own weights), e.g. --member-checkpoint cfvit=runs/full/cfvit/last.safetensors")
    g.add_argument("--thresholds", type=number_list(float, 0.0), help="SAC-ViT exit thresholds η, e.g. --thresholds 0.6,0.76,0.9 "
                                        "(default with --checkpoint: 0.6,0.76,0.9)")
    g.add_argument("--exit-share", dest="exit_shares", type=number_list(float),
                   help="force these shares of the bench images to exit at EE, e.g. --exit-share 0.77,0.5: "
                        "η is the matching quantile of the EE confidences (default without --checkpoint: "
                        "0.9,0.77,0.5)")
    g.add_argument("--tome-r", type=number_list(int), default=[4, 8, 13], help="ToMe tokens merged per block, e.g. --tome-r 4,8,13")
    g.add_argument("--evit-keep", type=number_list(float), default=[0.9, 0.7, 0.5],
                   help="EViT keep rates at its reduction blocks, e.g. --evit-keep 0.9,0.7,0.5")
    g = p.add_argument_group("timing")
    g.add_argument("--batch", type=int, default=64, help="throughput batch size (default 64), e.g. --batch 128")
    g.add_argument("--repeats", type=int, default=10,
                   help="timed batch runs per row; the median is reported (default 10), e.g. --repeats 30")
    g.add_argument("--warmup", type=int,
                   help="untimed runs per row before timing (default: a third of --repeats, at least 1, "
                        "i.e. ToMe's first-25%%-thrown-out), e.g. --warmup 3")
    g.add_argument("--latency-repeats", type=int, default=30,
                   help="batch-1 runs per row for latency median/p90, cycling over the bench images "
                        "(default 30; 0 skips latency), e.g. --latency-repeats 100")
    g.add_argument("--interleave", action="store_true",
                   help="time the rows round-robin instead of one after the other, so load changes on a "
                        "shared machine hit every row alike, e.g. --interleave")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads (torch.set_num_threads; default: torch's choice, printed), "
                        "e.g. --threads 8")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="device (default cpu; auto = cuda when available), e.g. --device cuda")
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast dtype (default none = float32), e.g. --amp bf16")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the plain models, the peers and SAC-ViT's EE and SAC stages "
                        "(fullgraph=True; the exit decision stays on the host), e.g. --compile")
    g.add_argument("--runtime", dest="runtimes", default=["torch"],
                   type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                   help=f"comma-separated runtimes of {','.join(RUNTIMES)} (default torch): ort adds DeiT "
                        "exported to ONNX and SAC-ViT's two ONNX graphs on onnxruntime (same threads, same "
                        "images; graphs under OUT/onnx), e.g. --runtime torch,ort")
    g.add_argument("--profile", action="store_true",
                   help="also split SAC-ViT predict (the setting nearest exit share 0.77) at --batch into "
                        "EE / clustering / reuse / crop+re-embed / SAC blocks / head, and write a "
                        "torch.profiler op table to profile.txt, e.g. --profile")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default 0), e.g. --seed 1")
    g.add_argument("--out", default="runs/bench", help="output folder (default runs/bench), e.g. --out runs/bench")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["member_checkpoints"] = dict(values.get("member_checkpoints") or [])
    run(BenchConfig(**values))
    return 0
