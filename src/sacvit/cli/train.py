"""``sacvit train``: the options of :class:`~sacvit.engine.train.TrainConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..data import DATASET_NAMES
from ..devices import AMP_MODES
from ..engine.train import TrainConfig, train
from .common import HelpFormatter, json_dict

__all__ = ["add_parser", "IMAGENET_RECIPE"]

#: The ImageNet fine-tuning recipe, as the README shows it (a test checks that both agree).
IMAGENET_RECIPE = """\
torchrun --nproc_per_node=8 -m sacvit.cli train \\
    --model sacvit_deit_small_patch16_224 --init /models/deit_small_patch16_224.safetensors \\
    --data imagefolder --data-dir /data/imagenet --epochs 30 --batch-size 1024 --lr 2e-4 \\
    --warmup-epochs 1 --mixup 0.8 --cutmix 1.0 --label-smoothing 0.1 --drop-path 0.1 \\
    --select-after 0.3 --out-dir runs/sacvit_s"""

_EXAMPLES = f"""\
examples:
  # CPU demo size: SAC-ViT on Cluttered Fashion-MNIST, then the same-size plain ViT baseline
  sacvit train --model sacvit_demo_patch8_112 --epochs 30 --out-dir runs/sacvit_demo
  sacvit train --model deit_demo_patch8_112 --epochs 30 --out-dir runs/deit_demo

  # ImageNet on 8 GPUs, fine-tuned from DeiT-S weights (the same command with
  # --model deit_small_patch16_224 trains the baseline with the identical recipe)
  {IMAGENET_RECIPE.replace(chr(10), chr(10) + '  ')}

  # continue an interrupted run exactly where its last checkpoint left it
  sacvit train --model sacvit_demo_patch8_112 --epochs 30 --out-dir runs/sacvit_demo --resume

  # long runs: also checkpoint every 500 steps and every 20 minutes within an epoch
  sacvit train ... --checkpoint-every 500 --checkpoint-minutes 20

  # DDP that survives a lost worker: torchrun restarts the processes once, and they resume
  # from the last checkpoint by themselves (no --resume needed)
  torchrun --standalone --nproc_per_node=2 --max-restarts=1 -m sacvit.cli train ... --checkpoint-every 500

  # fail on the first unreadable image instead of skipping it
  sacvit train --data imagefolder --data-dir /data/imagenet --strict ...

The train split is trained on; the validation curve is measured on --holdout training images
that are never trained on (never on the test split). Writes OUT_DIR/metrics.jsonl (one JSON line
per epoch) and OUT_DIR/last.safetensors (the weights to use: the EMA weights with --ema) after
every epoch. Checkpoints: OUT_DIR/checkpoints/step-N/ (weights, EMA, optimizer, scheduler, AMP
scaler, RNG states, sampler position, manifest.json with the SHA-256 of each file) and
checkpoints/latest naming the newest; the previous one is kept, and --resume falls back to it
when the newest is damaged (and says so). A resumed run ends bit-identical to an uninterrupted
one (one process, --workers 0). A non-finite loss or gradient skips the step (counted as
nonfinite_steps in metrics.jsonl); --max-nonfinite in a row stop the run. Image folders: unreadable
files (empty, truncated, corrupt, not an image) are skipped, printed with their reason and counted
as skipped_files. Under torchrun, OMP_NUM_THREADS defaults to 1: pass --threads for multi-process
CPU runs.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit train``."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a SAC-ViT (or a plain timm ViT baseline), single process or torchrun DDP",
        description="Train a SAC-ViT or a plain timm ViT with the same recipe (AdamW, cosine "
                    "schedule with warm-up, label smoothing, optional Mixup/CutMix, model EMA).",
        epilog=_EXAMPLES, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--model", default=d.model, help="timm model name: sacvit_* is a SAC-ViT, any other ViT a baseline")
    a("--model-kwargs", type=json_dict, default={}, help='extra timm.create_model arguments as JSON, e.g. \'{"depth": 8}\'')
    a("--data", choices=DATASET_NAMES, default=d.data,
      help="dataset: cluttered-fmnist (the CPU demo data; cluttered-fmnist-v1 is sacvit 0.1's), fmnist, "
           "imagefolder (DATA_DIR/train, DATA_DIR/val), synthetic (tiny smoke-test data)")
    a("--data-dir", default=d.data_dir, help="dataset folder (default for Fashion-MNIST: the system copy)")
    a("--img-size", type=int, default=d.img_size, help="input side in pixels (default: the model's)")
    a("--train-length", type=int, default=d.train_length, help="use only this many training images (default: all)")
    a("--val-length", type=int, default=d.val_length, help="validate on only this many held-out images (default: all)")
    a("--holdout", type=int, default=d.holdout,
      help="training images held out for validation and calibration (default: 10000, or a sixth of a smaller set)")
    a("--epochs", type=int, default=d.epochs, help="total epochs")
    a("--batch-size", type=int, default=d.batch_size, help="global batch size over all processes")
    a("--lr", type=float, default=d.lr, help="peak learning rate (after warm-up)")
    a("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    a("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up epochs")
    a("--min-lr", type=float, default=d.min_lr, help="final learning rate of the cosine schedule")
    a("--label-smoothing", type=float, default=d.label_smoothing, help="label smoothing")
    a("--mixup", type=float, default=d.mixup, help="Mixup alpha (0: off)")
    a("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0: off)")
    a("--drop-path", type=float, default=d.drop_path, help="stochastic depth rate")
    a("--clip-grad", type=float, default=d.clip_grad, help="gradient-norm clipping (0: off)")
    a("--ema", action=argparse.BooleanOptionalAction, default=d.ema,
      help="keep, validate and save an EMA of the weights (timm ModelEmaV3 with warm-up; default: on)")
    a("--ema-decay", type=float, default=d.ema_decay, help="the EMA's largest decay")
    a("--amp", choices=AMP_MODES, default=d.amp, help="autocast on CUDA (fp16 with a gradient scaler), ignored on CPU")
    a("--workers", type=int, default=d.workers, help="DataLoader workers per process (default: 0 on CPU, ≤8 on GPU)")
    a("--threads", type=int, default=d.threads, help="CPU threads per process (default: all cores / processes)")
    a("--seed", type=int, default=d.seed, help="seed of initialisation, sampler and generated data")
    a("--init", default=d.init, help="DeiT/timm checkpoint (.pth/.safetensors) to initialise the backbone")
    a("--out-dir", default=d.out_dir, help="output folder")
    a("--resume", action="store_true", help="continue the run in --out-dir from its newest good checkpoint "
      "(optimizer, schedule, EMA, sampler position and RNG states included)")
    a("--checkpoint-every", type=int, default=d.checkpoint_every,
      help="also checkpoint every N optimizer steps within an epoch (0: only at epoch ends)")
    a("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
      help="also checkpoint when this many minutes passed since the last checkpoint (0: off)")
    a("--max-nonfinite", type=int, default=d.max_nonfinite,
      help="stop after this many steps in a row with a non-finite loss or gradient (each is skipped)")
    a("--strict", action="store_true", help="fail on the first unreadable training image instead of skipping it")
    a("--sac", type=json_dict, default={}, help="SACConfig overrides as JSON, e.g. '{\"window\": 5, \"alpha\": 0.88}'")
    a("--select-after", type=float, default=d.select_after,
      help="fraction of training with the whole image as SAC target (selection warm-up)")
    a("--kl-weight", type=float, default=d.kl_weight, help="λ of the loss's KL term, SAC → EE (0: off)")
    a("--kl-tau", type=float, default=d.kl_tau, help="temperature τ of the KL term")
    a("--eval-every", type=int, default=d.eval_every, help="validate every N epochs (0: only at the end)")
    a("--log-every", type=int, default=d.log_every, help="log the loss to steps.jsonl every N steps (0: off)")
    a("--cache-dir", default=d.cache_dir, help="pre-rendered data cache (default: OUT_DIR/../cache)")
    a("--no-cache", dest="cache", action="store_false", help="do not cache pre-rendered data on disk")
    a("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="device")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    path = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}")
    return 0
