"""Training loop for SAC-ViT and plain timm ViT baselines, single process or DDP under ``torchrun``.

One recipe for both kinds of model, so comparisons are fair: AdamW, per-step cosine schedule
with linear warm-up, label smoothing, optional Mixup/CutMix, drop-path, gradient clipping, model
EMA (timm's ``ModelEmaV3``) and (on CUDA) bf16/fp16 autocast. SAC-ViT models are trained with
:func:`~sacvit.engine.loss.sac_loss` on ``model(x, full_window=progress < select_after)``;
plain models with cross-entropy.

Data: the ``train`` split is trained on; the validation curve is measured on the ``holdout``
split (training images never trained on), never on the test split. A
:class:`~torch.utils.data.DistributedSampler` is used in every mode, so global batch ``k`` holds
the same images whatever the number of processes; each process takes ``batch_size / world_size``
of them. Only rank 0 writes files (see :mod:`.distributed` for the process setup).

Outputs in ``out_dir``: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``steps.jsonl``
(with ``log_every``), after every epoch ``last.safetensors`` — the weights to use (the EMA
weights when EMA is on) with their metadata — and the training checkpoints of
:mod:`.train_state` (at epoch ends, every ``checkpoint_every`` steps and every
``checkpoint_minutes``), from which ``resume`` (or a torchrun restart) continues bit-identically.

Faults: a step whose loss or gradient norm is not finite is skipped (no update, no EMA step; the
schedule goes on) and counted; ``max_nonfinite`` in a row stop the run. The check costs one host
sync per step (and a two-element all-reduce under DDP, which also carries the time-based
checkpoint decision so that all ranks agree).

Structure: :func:`train` is the loop, top to bottom; :func:`_start` builds a run's objects (a
``_Run``), :func:`_begin_epoch`, :func:`_step` and :func:`_end_epoch` are its parts. The order of
RNG draws, on which the bit-identical resume depends: seed, then a fresh run's initialisation
(:func:`_start`); a resumed rank's RNG state once the optimiser is built; each epoch's start state
recorded before the DataLoader draws its seeds (:func:`_begin_epoch`); then, per step, Mixup/CutMix
and the model's drop-path (:func:`_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..config import SACConfig
from ..devices import amp_dtype
from ..data.classes import check_class_names
from ..data.preprocess import preprocess_for
from .distributed import Dist, all_mean, rng_state, seed_everything, setup, teardown
from .logs import append_json, restore_logs
from .loss import cross_entropy, sac_loss
from ..io.checkpoint import CheckpointMeta, DataSpec
from ..io.train_state import Checkpointer, RankState, Snapshot
from .resume import (ResumableSampler, check_resumed_sac, restore_optimisation, resume_epoch, resume_or_start,
                     save_everywhere, shared_state)

__all__ = ["TrainConfig", "train", "CHECKPOINT"]

CHECKPOINT = "last.safetensors"


@dataclass
class TrainConfig:
    """Everything one training run needs; each field is a ``sacvit train`` option.

    Attributes:
        model: timm model name; ``sacvit_*`` names are SAC-ViT, any other timm ViT is a baseline.
        model_kwargs: extra ``timm.create_model`` arguments (``embed_dim``, ``depth``, …).
        data: dataset name, one of :data:`sacvit.data.DATASET_NAMES`.
        data_dir: dataset folder (Fashion-MNIST idx files, or an image folder with train/ val/).
        img_size: input side in pixels (default: the model's).
        train_length: use only this many training images.
        val_length: validate on only this many held-out images.
        holdout: training images held out for validation (default: 10 000, or a sixth).
        epochs: total number of epochs.
        batch_size: global batch size (over all processes).
        lr: peak learning rate (reached after warm-up).
        weight_decay: AdamW weight decay (none on biases, norms, position embeddings, CLS).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        min_lr: final learning rate of the cosine schedule.
        label_smoothing: label smoothing ε.
        mixup: Mixup α (0: off).
        cutmix: CutMix α (0: off).
        drop_path: stochastic depth rate.
        clip_grad: gradient-norm clipping (``None`` or 0: off).
        ema: keep an exponential moving average of the weights (timm ``ModelEmaV3``), validate
            and save it.
        ema_decay: the EMA's largest decay; with its warm-up the decay at step ``t`` is
            ``min(ema_decay, 1 − (1 + t)^(−2/3))``, so short and long runs share one setting.
        amp: autocast on CUDA (ignored on CPU): ``"none"``, ``"bf16"`` or ``"fp16"`` (the latter with
            a gradient scaler) — :data:`sacvit.devices.AMP_MODES`.
        workers: DataLoader workers per process (default 0 on CPU, up to 8 on GPU).
        threads: CPU threads per process (default ``OMP_NUM_THREADS`` or all cores / local processes).
        seed: seed of the initialisation, the sampler and the synthetic/cluttered data.
        init: backbone checkpoint (DeiT/timm ``.pth``/``.safetensors``) to start from.
        out_dir: output folder.
        resume: continue the run in ``out_dir`` from ``last.safetensors``.
        sac: :class:`~sacvit.config.SACConfig` field overrides for SAC-ViT models.
        select_after: fraction of training during which the SAC stage sees the whole image as
            target (window = full grid); token selection switches on afterwards (CF-/LF-ViT's
            warm-up). SAC-ViT only.
        kl_weight: λ of the loss's KL term (SAC → EE distillation); 0: no KL term. SAC-ViT only.
        kl_tau: temperature τ of the KL term.
        eval_every: validate every N epochs (and after the last one); 0: only after the last.
        log_every: append the all-reduced loss to ``steps.jsonl`` every N steps (0: off).
        cache_dir: folder for pre-rendered Fashion-MNIST arrays (default ``<out_dir>/../cache``).
        cache: use the pre-render cache.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        checkpoint_every: also checkpoint every N optimizer steps within an epoch (0: off).
        checkpoint_minutes: also checkpoint when this many minutes passed since the last one (0: off).
        max_nonfinite: stop when this many steps in a row had a non-finite loss or gradient
            (each one is skipped: no update, no EMA step; counted in ``metrics.jsonl``).
        strict: fail on the first unreadable training image instead of skipping it.
    """

    model: str = "sacvit_demo_patch8_112"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "cluttered-fmnist"
    data_dir: str | None = None
    img_size: int | None = None
    train_length: int | None = None
    val_length: int | None = None
    holdout: int | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path: float = 0.1
    clip_grad: float | None = 1.0
    ema: bool = True
    ema_decay: float = 0.9998
    amp: str = "bf16"
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    init: str | None = None
    out_dir: str = "runs/train"
    resume: bool = False
    sac: dict[str, Any] = field(default_factory=dict)
    select_after: float = 0.0
    kl_weight: float = 1.0
    kl_tau: float = 1.0
    eval_every: int = 1
    log_every: int = 0
    cache_dir: str | None = None
    cache: bool = True
    device: str = "auto"
    checkpoint_every: int = 0
    checkpoint_minutes: float = 30.0
    max_nonfinite: int = 5
    strict: bool = False


# ---------------------------------------------------------------------------------------- model, optimiser
def _default_img_size(cfg: TrainConfig) -> int:
    import timm

    if cfg.img_size:
        return int(cfg.img_size)
    if "img_size" in cfg.model_kwargs:
        size = cfg.model_kwargs["img_size"]
        return int(size if isinstance(size, int) else size[0])
    pretrained = timm.models.get_pretrained_cfg(cfg.model)
    return int(pretrained.input_size[-1]) if pretrained is not None else 224


def _build_model(cfg: TrainConfig, num_classes: int, img_size: int,
                 classes: list[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Create the model from the config; returns it and its ``timm.create_model`` kwargs (no ``sac``).

    An ``--init`` checkpoint whose head is loaded (same class count) and that records class names
    (a sacvit checkpoint) must record ``classes``, in order."""
    import timm

    if not timm.models.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}; see timm.list_models('*vit*') or the sacvit_* variants")
    is_sac = cfg.model.startswith("sacvit_")
    kwargs = {**cfg.model_kwargs, "img_size": img_size, "num_classes": num_classes, "drop_path_rate": cfg.drop_path}
    if cfg.sac and not is_sac:
        raise ValueError(f"--sac applies to sacvit_* models, not {cfg.model!r}")
    extra = {"sac": SACConfig.from_dict(dict(cfg.sac))} if is_sac else {}
    try:
        model = timm.create_model(cfg.model, **kwargs, **extra)
    except TypeError as err:
        raise ValueError(f"cannot create {cfg.model!r} with {kwargs}: {err}") from err
    if cfg.init:
        from ..model import load_backbone_weights

        left = load_backbone_weights(model, cfg.init)
        names = _recorded_class_names(cfg.init)
        if classes is not None and names is not None and not any(k.startswith("head.") for k in left):
            check_class_names(names, classes, f"--init {cfg.init} (its head is loaded) vs the training data")
    return model, kwargs


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


# ---------------------------------------------------------------------------------------- validation
@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, d: Dist, amp: dict[str, Any]) -> dict[str, float]:
    """Top-1 (%) on this rank's shard, all-reduced: EE and SAC for SAC-ViT, else plain."""
    from ..model import SACViT

    was_training = model.training
    model.eval()
    is_sac = isinstance(model, SACViT)
    counts = torch.zeros(3, dtype=torch.float64, device=d.device)  # n, correct ee/plain, correct sac
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(**amp):
            if is_sac:
                ee, sac = (p.logits for p in model.predict_stages(x))
            else:
                ee, sac = model(x), None
        counts[0] += len(y)
        counts[1] += (ee.argmax(-1) == y).sum()
        if sac is not None:
            counts[2] += (sac.argmax(-1) == y).sum()
    if d.world > 1:
        dist.all_reduce(counts)
    n = max(1.0, float(counts[0]))
    model.train(was_training)
    if is_sac:
        return {"val_top1_ee": 100 * float(counts[1]) / n, "val_top1_sac": 100 * float(counts[2]) / n}
    return {"val_top1": 100 * float(counts[1]) / n}


# ---------------------------------------------------------------------------------------- training
def _datasets(cfg: TrainConfig, out: Path, img_size: int, d: Dist) -> tuple[Dataset, Dataset]:
    from ..data import build_dataset

    cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else out.resolve().parent / "cache") if cfg.cache else None
    common = dict(holdout=cfg.holdout, seed=cfg.seed, prerender=True, cache_dir=cache_dir, main=d.main, world=d.world,
                  strict=cfg.strict)
    train_set = build_dataset(cfg.data, cfg.data_dir, "train", img_size, length=cfg.train_length,
                              is_training=True, **common)
    val_set = build_dataset(cfg.data, cfg.data_dir, "holdout", img_size, length=cfg.val_length, **common)
    return train_set, val_set


def _check_config(cfg: TrainConfig, d: Dist) -> None:
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


def _step_flags(loss: torch.Tensor, norm: torch.Tensor | None, due: bool, d: Dist) -> tuple[bool, bool]:
    """(non-finite loss or gradient, checkpoint due), agreed by every rank: one host sync per step,
    plus one two-element all-reduce under DDP."""
    bad = ~torch.isfinite(loss.detach())
    if norm is not None:
        bad = bad | ~torch.isfinite(norm)
    if d.world == 1:
        return bool(bad), due
    flags = torch.stack([bad.float(), torch.full((), float(due), device=loss.device)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


@dataclass
class _Run:
    """The objects of one run, built by :func:`_start`, and its counters."""

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


@dataclass
class _Epoch:
    """The running totals of one epoch."""

    index: int  # 0-based
    t0: float
    loss_sum: torch.Tensor  # of the finite steps' losses
    nonfinite: int  # steps skipped
    rng: dict[str, Any]  # every RNG state at the epoch's start, before the DataLoader draws its seeds
    first: int  # the first batch to train (> 0 in a resumed epoch)


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
        model, model_kwargs = _build_model(cfg, len(classes), img_size, classes)
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
            for name in ("metrics.jsonl", "steps.jsonl"):  # a torchrun restart before the first checkpoint
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
    return saver


def _start(cfg: TrainConfig, d: Dist, train_set: Dataset | None, val_set: Dataset | None) -> _Run:
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
    sac_cfg = model.sac_cfg if is_sac else None
    if snap is not None and is_sac:
        check_resumed_sac(sac_cfg, cfg.sac, snap.folder)
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
    meta = CheckpointMeta(model_name=cfg.model, model_kwargs=model_kwargs, sac_config=sac_cfg, class_names=classes,
                          preprocess=preprocess_for(cfg.data, img_size).to_dict(),
                          data=DataSpec(name=cfg.data, folder=cfg.data_dir, seed=cfg.seed, holdout=cfg.holdout,
                                        image_size=img_size))
    sampler, batches, train_loader, val_loader = _loaders(cfg, d, train_set, val_set, per_rank)
    return _Run(cfg=cfg, d=d, out=out, snap=snap, classes=classes, per_rank=per_rank, steps_per_epoch=steps_per_epoch,
                skipped_files=len(getattr(train_set, "skipped", ())), model=model, net=net, is_sac=is_sac, ema=ema,
                optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp=amp, total_steps=total_steps, mixup=mixup,
                sampler=sampler, batches=batches, train_loader=train_loader, val_loader=val_loader,
                saver=_checkpointer(d, out, snap, meta), start_epoch=start_epoch, history=history, step=step)


def _begin_epoch(run: _Run, epoch: int) -> _Epoch:
    """Set the sampler to ``epoch``; in the interrupted epoch of a resume, skip its finished batches
    and restore its RNG states."""
    t0 = time.perf_counter()
    run.sampler.set_epoch(epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.d.device)
    run.batches.skip, nonfinite = 0, 0
    if epoch == run.start_epoch and run.snap is not None and run.snap.batch > 0:
        partial, nonfinite = resume_epoch(run.snap, run.batches, run.per_rank, run.d)
        loss_sum += partial
    return _Epoch(epoch, t0, loss_sum, nonfinite, rng_state(), run.batches.skip // run.per_rank)


def _loss(run: _Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of one batch (Mixup/CutMix or label smoothing applied to the targets)."""
    cfg, num_classes = run.cfg, len(run.classes)
    if run.mixup is not None:
        x, target = run.mixup(x, y)
    elif cfg.label_smoothing > 0:
        target = F.one_hot(y, num_classes).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / num_classes
    else:
        target = y
    with torch.autocast(**run.amp):
        if run.is_sac:
            logits_ee, logits_sac = run.net(x, full_window=run.step / run.total_steps < cfg.select_after)
            return sac_loss(logits_ee.float(), logits_sac.float(), target, kl_weight=cfg.kl_weight, kl_tau=cfg.kl_tau)
        return cross_entropy(run.net(x).float(), target)


def _grad_norm(run: _Run) -> torch.Tensor | None:
    """Clip the gradients (``clip_grad``) and return their norm; ``None`` under fp16 loss scaling without
    clipping (inf gradients are then the scaler's to skip)."""
    if run.cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        return nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    if not run.scaler.is_enabled():
        return nn.utils.get_total_norm([p.grad for p in run.model.parameters() if p.grad is not None])
    return None


def _step(run: _Run, ep: _Epoch, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """One optimizer step; a non-finite loss or gradient skips the update (the schedule goes on with the
    data), ``max_nonfinite`` of them in a row stop the run.

    Returns:
        The loss and whether a time-based checkpoint is due (agreed by every rank).
    """
    cfg, d = run.cfg, run.d
    x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
    loss = _loss(run, x, y)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    norm = _grad_norm(run)
    due = bool(cfg.checkpoint_minutes) and time.monotonic() - run.last_save >= 60 * cfg.checkpoint_minutes
    bad, due = _step_flags(loss, None if run.scaler.is_enabled() else norm, due, d)
    if bad:
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler.is_enabled():
            run.scaler.update(run.scaler.get_scale())
        ep.nonfinite, run.in_row = ep.nonfinite + 1, run.in_row + 1
        if run.in_row >= cfg.max_nonfinite:
            raise ValueError(f"training stopped at step {run.step + 1} (epoch {ep.index + 1}): the loss or "
                             f"gradient was not finite for {run.in_row} steps in a row; the last checkpoint "
                             f"({run.out / 'checkpoints'}) is intact — lower --lr or check the data, then --resume")
    else:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.in_row = 0
    run.scheduler.step()
    run.step += 1
    if not bad:
        if run.ema is not None:
            run.ema.update(run.model, step=run.step)
        ep.loss_sum += loss.detach()
    return loss, due


def _log_step(run: _Run, ep: _Epoch, loss: torch.Tensor) -> None:
    """Every ``log_every`` steps: the all-reduced loss to ``steps.jsonl``."""
    if run.cfg.log_every and run.step % run.cfg.log_every == 0:
        value = all_mean(loss, run.d)
        if run.d.main:
            append_json(run.out / "steps.jsonl", {"step": run.step, "epoch": ep.index + 1, "loss": value,
                                                  "lr": run.scheduler.get_last_lr()[0]})


def _save(run: _Run, nonfinite: int, own: RankState, **position: Any) -> None:
    """Checkpoint (every rank takes part; rank 0 writes) at ``position`` (``epoch``, ``batch``, ``record``)."""
    save_everywhere(run.saver, run.d, run.model, run.ema_module,
                    shared_state(run.optimizer, run.scheduler, run.scaler, run.step, run.d, run.history, nonfinite),
                    own, step=run.step, **position)
    run.last_save = time.monotonic()


def _end_epoch(run: _Run, ep: _Epoch) -> None:
    """The epoch's record (loss, validation when due), its checkpoint and ``OUT/last.safetensors``, its logs."""
    cfg, d = run.cfg, run.d
    trained = run.steps_per_epoch - ep.nonfinite  # every rank skipped the same steps
    train_loss = all_mean(ep.loss_sum, d) / trained if trained else math.nan
    if not math.isfinite(train_loss):
        raise ValueError(f"training diverged in epoch {ep.index + 1} (loss {train_loss}); lower --lr")
    record: dict[str, Any] = {"epoch": ep.index + 1, "train_loss": train_loss, "lr": run.scheduler.get_last_lr()[0],
                              "steps": run.step, "nonfinite_steps": ep.nonfinite, "skipped_files": run.skipped_files}
    if ep.index + 1 == cfg.epochs or (cfg.eval_every and (ep.index + 1) % cfg.eval_every == 0):
        record.update(_validate(run.deployed, run.val_loader, d, run.amp))
    record["seconds"] = time.perf_counter() - ep.t0
    run.history.append(record)
    _save(run, 0, RankState(rng_state()), epoch=ep.index + 1, batch=0, record=record)
    if d.main:
        append_json(run.out / "metrics.jsonl", record)
        print(_summary(record, cfg.epochs), flush=True)


def train(cfg: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None) -> Path:
    """Train (or resume) a model and return the path of its final checkpoint.

    Args:
        cfg: the run's configuration.
        train_set: a dataset with ``classes`` to use instead of ``cfg.data`` (library use).
        val_set: its validation set (required with ``train_set``).

    Returns:
        ``out_dir/last.safetensors``.

    Raises:
        ValueError: bad configuration, unusable data or checkpoint, or a run stopped by non-finite
            losses (the message names the cause).
        DatasetNotFoundError: the dataset is missing.
        CheckpointWriteError: a checkpoint could not be written (the previous one is intact).
    """
    from tqdm.auto import tqdm

    d = setup(cfg.device, cfg.threads)
    try:
        _check_config(cfg, d)
        run = _start(cfg, d, train_set, val_set)
        for epoch in range(run.start_epoch, cfg.epochs):
            ep = _begin_epoch(run, epoch)
            bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       total=run.steps_per_epoch, initial=ep.first, disable=not (d.main and sys.stderr.isatty()))
            for i, (x, y) in enumerate(bar, start=ep.first):
                loss, due = _step(run, ep, x, y)
                _log_step(run, ep, loss)
                if i % 10 == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                every = cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
                if (every or due) and i + 1 < run.steps_per_epoch:  # the epoch end saves anyway
                    own = RankState(rng_state(), epoch_rng=ep.rng, loss_sum=ep.loss_sum.cpu())
                    _save(run, ep.nonfinite, own, epoch=epoch, batch=i + 1)
            bar.close()
            _end_epoch(run, ep)
        if d.world > 1:
            dist.barrier()
        return run.out / CHECKPOINT
    finally:
        teardown(d)


def _summary(r: dict[str, Any], epochs: int) -> str:
    vals = " ".join(f"{k.removeprefix('val_')} {v:.2f}%" for k, v in r.items() if k.startswith("val_"))
    return f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  lr {r['lr']:.2e}  {vals}  ({r['seconds']:.1f} s)"
