"""The objects of one training run, built in the order of its RNG draws (:func:`start_run` → :class:`Run`).

Data (train and held-out splits), the model (new, from ``--init`` weights, or the checkpoint's on
resume, class names checked by name), EMA, optimiser, schedule, autocast and gradient scaler,
Mixup/CutMix, the DDP wrapper, the loaders and rank 0's checkpoint writer. The loop that uses them
is :mod:`.train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..data.classes import check_class_names
from ..data.preprocess import preprocess_for
from ..devices import amp_dtype
from ..io.checkpoint import CheckpointMeta, DataSpec
from ..io.run_files import METRICS, STEPS
from ..io.train_state import Checkpointer, Snapshot
from ..model.dvt import DVT
from ..model.registry import method_of
from .distributed import Dist, seed_everything
from .logs import restore_logs
from .resume import ResumableSampler, check_resumed_sac, keep_best, restore_optimisation, resume_or_start
from .train_config import TrainConfig

__all__ = ["Run", "start_run", "check_config", "build_model"]


def _default_img_size(cfg: TrainConfig) -> int:
    import timm

    if cfg.img_size:
        return int(cfg.img_size)
    if "img_size" in cfg.model_kwargs:
        size = cfg.model_kwargs["img_size"]
        return int(size if isinstance(size, int) else size[0])
    pretrained = timm.models.get_pretrained_cfg(cfg.model)
    return int(pretrained.input_size[-1]) if pretrained is not None else 224


def build_model(cfg: TrainConfig, num_classes: int, img_size: int,
                 classes: list[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Create the model from the config; returns it and its ``timm.create_model`` kwargs (no ``sac``).

    An ``--init`` checkpoint whose head is loaded (same class count) and that records class names
    (a sacvit checkpoint) must record ``classes``, in order."""
    import timm

    if not timm.models.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}; see timm.list_models('*vit*') or the sacvit_* variants")
    is_sac = method_of(cfg.model) is not None
    kwargs = {**cfg.model_kwargs, "img_size": img_size, "num_classes": num_classes, "drop_path_rate": cfg.drop_path}
    if cfg.sac and not is_sac:
        raise ValueError(f"--sac applies to the sacvit_*, cfvit_* and lfvit_* models, not {cfg.model!r}")
    extra = {"sac": dict(cfg.sac)} if is_sac else {}  # merged over the method's defaults by the model
    try:
        model = timm.create_model(cfg.model, **kwargs, **extra)
    except TypeError as err:
        raise ValueError(f"cannot create {cfg.model!r} with {kwargs}: {err}") from err
    except ValueError as err:
        raise ValueError(_window_hint(str(err), dict(cfg.sac))) from err
    if cfg.init:
        from ..model import load_backbone_weights

        left = load_backbone_weights(model, cfg.init)
        names = _recorded_class_names(cfg.init)
        if classes is not None and names is not None and not any(k.startswith("head.") for k in left):
            check_class_names(names, classes, f"--init {cfg.init} (its head is loaded) vs the training data")
    if isinstance(model, DVT):  # the cascade's configuration (and later its η) travels in the kwargs
        kwargs["dvt"] = model.dvt_cfg.to_dict()
    return model, kwargs


def _window_hint(message: str, sac: dict[str, Any]) -> str:
    """A window that does not fit the EE grid (:class:`~sacvit.model.policy.ClusterPolicy`'s
    message), with the ``--sac`` value or the ``--img-size`` that fixes it; other messages as they are."""
    grid = re.search(r"fits? the (\d+)×(\d+) EE grid", message)
    if grid is None:
        return message
    largest = min(int(grid[1]), int(grid[2]))
    if message.startswith("no adaptive window size"):
        return f"{message}: pass --sac with \"adaptive_sizes\" of at most {largest}, or a larger --img-size"
    fix = json.dumps({**sac, "window": largest})
    if "window" not in sac:
        message = message.replace(" does not fit", " (the default) does not fit", 1)
    return f"{message}: pass --sac '{fix}' (the largest window that fits; the demo uses 3) or a larger --img-size"


def _recorded_class_names(path: str) -> list[str] | None:
    """The class names a sacvit checkpoint records; ``None`` for other weights (DeiT, timm)."""
    from ..io.checkpoint import CheckpointError, read_metadata

    try:
        return list(read_metadata(path).class_names)
    except (CheckpointError, FileNotFoundError):
        return None


def _schedule(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return (cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / cfg.lr

    return factor, total


def _datasets(cfg: TrainConfig, out: Path, img_size: int, d: Dist) -> tuple[Dataset, Dataset]:
    from ..data import build_dataset

    cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else out.resolve().parent / "cache") if cfg.cache else None
    common = dict(holdout=cfg.holdout, seed=cfg.seed, prerender=True, cache_dir=cache_dir, main=d.main, world=d.world,
                  strict=cfg.strict)
    train_set = build_dataset(cfg.data, cfg.data_dir, "train", img_size, length=cfg.train_length,
                              is_training=True, **common)
    val_set = build_dataset(cfg.data, cfg.data_dir, "holdout", img_size, length=cfg.val_length, **common)
    return train_set, val_set


def check_config(cfg: TrainConfig, d: Dist) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ValueError(f"--epochs and --batch-size must be ≥ 1 and --lr > 0, "
                         f"got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
    if not 0 < cfg.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in (0, 1), got {cfg.ema_decay}")
    if cfg.batch_size % d.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {d.world} processes")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and (cfg.batch_size // d.world) % 2:
        raise ValueError(f"Mixup/CutMix need an even batch per process, got {cfg.batch_size // d.world}")
    if not 0.0 <= cfg.select_after <= 1.0 or cfg.kl_weight < 0 or cfg.kl_tau <= 0:
        raise ValueError(f"--select-after must be in [0, 1], --kl-weight ≥ 0 and --kl-tau > 0, "
                         f"got {cfg.select_after}, {cfg.kl_weight}, {cfg.kl_tau}")
    amp_dtype(cfg.amp)  # a known spelling
    if cfg.checkpoint_every < 0 or cfg.checkpoint_minutes < 0 or cfg.max_nonfinite < 1:
        raise ValueError(f"--checkpoint-every and --checkpoint-minutes must be ≥ 0 and --max-nonfinite ≥ 1, "
                         f"got {cfg.checkpoint_every}, {cfg.checkpoint_minutes}, {cfg.max_nonfinite}")


@dataclass
class Run:
    """The objects of one run, built by :func:`start_run`, and its counters."""

    cfg: TrainConfig
    d: Dist
    out: Path
    snap: Snapshot | None
    classes: list[str]
    per_rank: int
    steps_per_epoch: int
    skipped_files: int
    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    is_sac: bool
    is_cascade: bool  # a DVT: every stage's logits, cascade_loss
    ema: Any  # timm ModelEmaV3 or None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp: dict[str, Any]  # torch.autocast arguments
    total_steps: int
    mixup: Any  # timm Mixup or None
    sampler: DistributedSampler
    batches: ResumableSampler
    train_loader: DataLoader
    val_loader: DataLoader
    saver: Checkpointer | None  # rank 0 only
    start_epoch: int
    history: list[dict[str, Any]]
    step: int
    last_save: float = field(default_factory=time.monotonic)
    in_row: int = 0  # non-finite steps in a row

    @property
    def ema_module(self) -> nn.Module | None:
        return None if self.ema is None else self.ema.module

    @property
    def deployed(self) -> nn.Module:
        """The weights validated and deployed: the EMA's when EMA is on."""
        return self.model if self.ema is None else self.ema.module


def _data(cfg: TrainConfig, out: Path, d: Dist, train_set: Dataset | None,
          val_set: Dataset | None) -> tuple[Dataset, Dataset, int]:
    """The training and validation sets (``cfg.data``'s unless given) and the input side."""
    img_size = _default_img_size(cfg)
    if train_set is None:
        train_set, val_set = _datasets(cfg, out, img_size, d)
    elif val_set is None:
        raise ValueError("train(cfg, train_set) also needs val_set")
    return train_set, val_set, img_size


def _model(cfg: TrainConfig, d: Dist, out: Path, snap: Snapshot | None, classes: list[str],
           img_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's model, or a new one (drawing its initialisation) in a fresh run folder; on this
    device, in training mode. Returns it and its ``timm.create_model`` kwargs."""
    if snap is not None:
        model, meta = snap.model, snap.meta
        check_class_names(meta.class_names, classes, f"--resume from {snap.folder} vs the training data")
        model_kwargs = meta.model_kwargs
        if d.main:
            restore_logs(out, snap.state.history, snap.state.step)
    else:
        model, model_kwargs = build_model(cfg, len(classes), img_size, classes)
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
            for name in (METRICS, STEPS):  # a torchrun restart before the first checkpoint
                (out / name).unlink(missing_ok=True)
    return model.to(d.device).train(), model_kwargs


def _ema(cfg: TrainConfig, model: nn.Module, snap: Snapshot | None) -> Any:
    """timm's ``ModelEmaV3`` of ``model`` (the checkpoint's EMA weights on resume), or ``None``."""
    from timm.utils import ModelEmaV3

    if not cfg.ema:
        return None
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    if snap is not None and snap.ema is not None:
        ema.module.load_state_dict(snap.ema)
    ema.module.eval()
    return ema


def _optimisation(cfg: TrainConfig, model: nn.Module, d: Dist, steps_per_epoch: int) -> tuple[Any, ...]:
    """AdamW, its per-step schedule, the autocast arguments and the gradient scaler, and the total steps."""
    import timm.optim

    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    factor, total_steps = _schedule(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    dtype = amp_dtype(cfg.amp)
    use_amp = dtype is not None and d.device.type == "cuda"
    amp = dict(device_type=d.device.type, dtype=dtype or torch.bfloat16, enabled=use_amp)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    return optimizer, scheduler, amp, scaler, total_steps


def _mixup(cfg: TrainConfig, num_classes: int) -> Any:
    from timm.data import Mixup

    if cfg.mixup > 0 or cfg.cutmix > 0:
        return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                     num_classes=num_classes)
    return None


def _loaders(cfg: TrainConfig, d: Dist, train_set: Dataset, val_set: Dataset,
             per_rank: int) -> tuple[DistributedSampler, ResumableSampler, DataLoader, DataLoader]:
    """This rank's sampler (with its resumable wrapper) and its training and validation loaders."""
    workers = cfg.workers if cfg.workers is not None else (0 if d.device.type == "cpu" else min(8, os.cpu_count() or 1))
    loader_args = dict(num_workers=workers, pin_memory=d.device.type == "cuda", persistent_workers=workers > 0)
    sampler = DistributedSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
    batches = ResumableSampler(sampler)
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=batches, drop_last=True, **loader_args)
    val_loader = DataLoader(Subset(val_set, range(d.rank, len(val_set), d.world)), batch_size=per_rank, **loader_args)
    return sampler, batches, train_loader, val_loader


def _checkpointer(d: Dist, out: Path, snap: Snapshot | None, meta: CheckpointMeta) -> Checkpointer | None:
    """Rank 0's checkpoint writer (``None`` on the others); re-deploys an epoch end resumed from."""
    if not d.main:
        return None
    resumed = snap is not None and snap.folder != out
    saver = Checkpointer(out, meta, good=snap.folder.name if resumed else None)
    if resumed and snap.batch == 0:
        saver.redeploy(snap.folder)  # a kill between the commit and the copy to last.safetensors
        keep_best(out)  # … or before the copy to best.safetensors
    return saver


def start_run(cfg: TrainConfig, d: Dist, train_set: Dataset | None, val_set: Dataset | None) -> Run:
    """Everything a run needs, fresh or resumed, in the order of its RNG draws: seed, initialise a new
    model; on resume restore this rank's RNG state after the model and optimiser are built."""
    from ..model import SACViT

    out = Path(cfg.out_dir)
    snap = resume_or_start(out, cfg.model, cfg.resume, d)
    train_set, val_set, img_size = _data(cfg, out, d, train_set, val_set)
    classes, per_rank = list(train_set.classes), cfg.batch_size // d.world
    steps_per_epoch = math.ceil(len(train_set) / d.world) // per_rank  # DistributedSampler pads, drop_last
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_set)} images) is smaller than one batch ({cfg.batch_size})")

    seed_everything(cfg.seed + d.rank)  # rank 0 = the single-process initialisation; DDP broadcasts it
    model, model_kwargs = _model(cfg, d, out, snap, classes, img_size)
    is_sac = isinstance(model, SACViT)
    sac_config = model.sac_config if is_sac else None
    if snap is not None and is_sac:
        check_resumed_sac(sac_config, cfg.sac, snap.folder)
    ema = _ema(cfg, model, snap)
    optimizer, scheduler, amp, scaler, total_steps = _optimisation(cfg, model, d, steps_per_epoch)
    start_epoch = snap.epoch if snap is not None else 0
    history, step = [], start_epoch * steps_per_epoch
    if snap is not None:
        history, step = restore_optimisation(snap, d, optimizer, scheduler, scaler, cfg.seed)
    mixup = _mixup(cfg, len(classes))
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model,
                                                  device_ids=[d.device.index] if d.device.type == "cuda" else None)
    meta = CheckpointMeta(model_name=cfg.model, model_kwargs=model_kwargs, sac_config=sac_config, class_names=classes,
                          preprocess=preprocess_for(cfg.data, img_size).to_dict(),
                          data=DataSpec(name=cfg.data, folder=cfg.data_dir, seed=cfg.seed, holdout=cfg.holdout,
                                        image_size=img_size))
    sampler, batches, train_loader, val_loader = _loaders(cfg, d, train_set, val_set, per_rank)
    return Run(cfg=cfg, d=d, out=out, snap=snap, classes=classes, per_rank=per_rank, steps_per_epoch=steps_per_epoch,
                skipped_files=len(getattr(train_set, "skipped", ())), model=model, net=net, is_sac=is_sac,
                is_cascade=isinstance(model, DVT), ema=ema,
                optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp=amp, total_steps=total_steps, mixup=mixup,
                sampler=sampler, batches=batches, train_loader=train_loader, val_loader=val_loader,
                saver=_checkpointer(d, out, snap, meta), start_epoch=start_epoch, history=history, step=step)
