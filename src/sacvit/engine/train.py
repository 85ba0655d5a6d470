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

(About 470 lines: the loop stays in one function so that its order of RNG draws, on which the
bit-identical resume depends, can be read in one place.)
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
from ..data.preprocess import preprocess_for
from .distributed import Dist, all_mean, rng_state, seed_everything, set_rng_state, setup, teardown
from .logs import append_json, restore_logs
from .loss import cross_entropy, sac_loss
from ..io.checkpoint import CheckpointMeta, DataSpec
from ..io.train_state import Checkpointer, RankState
from .resume import ResumableSampler, check_resumed_sac, resume_epoch, resume_or_start, save_everywhere, shared_state

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


def _build_model(cfg: TrainConfig, num_classes: int, img_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """Create the model from the config; returns it and its ``timm.create_model`` kwargs (no ``sac``)."""
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

        load_backbone_weights(model, cfg.init)
    return model, kwargs


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
    from timm.utils import ModelEmaV3
    from tqdm.auto import tqdm

    from ..model import SACViT

    d = setup(cfg.device, cfg.threads)
    try:
        out = Path(cfg.out_dir)
        ckpt = out / CHECKPOINT
        _check_config(cfg, d)
        snap = resume_or_start(out, cfg.model, cfg.resume, d)
        img_size = _default_img_size(cfg)
        if train_set is None:
            train_set, val_set = _datasets(cfg, out, img_size, d)
        elif val_set is None:
            raise ValueError("train(cfg, train_set) also needs val_set")
        classes = list(train_set.classes)
        per_rank = cfg.batch_size // d.world
        steps_per_epoch = math.ceil(len(train_set) / d.world) // per_rank  # DistributedSampler pads, drop_last
        if steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_set)} images) is smaller than one batch ({cfg.batch_size})")
        skipped_files = len(getattr(train_set, "skipped", ()))

        seed_everything(cfg.seed + d.rank)  # rank 0 = the single-process initialisation; DDP broadcasts it
        if snap is not None:
            model, meta, state = snap.model, snap.meta, snap.state
            if list(meta.class_names) != classes:
                raise ValueError(f"{snap.folder} was trained on classes {list(meta.class_names)[:5]}…, "
                                 f"the data has {classes[:5]}…")
            model_kwargs, start_epoch = meta.model_kwargs, snap.epoch
            if d.main:
                restore_logs(out, state.history, state.step)
        else:
            model, model_kwargs = _build_model(cfg, len(classes), img_size)
            state, start_epoch = None, 0
            if d.main:
                out.mkdir(parents=True, exist_ok=True)
                (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
                for name in ("metrics.jsonl", "steps.jsonl"):  # a torchrun restart before the first checkpoint
                    (out / name).unlink(missing_ok=True)
        model.to(d.device).train()
        is_sac = isinstance(model, SACViT)
        sac_cfg = model.sac_cfg if is_sac else None
        if snap is not None and is_sac:
            check_resumed_sac(sac_cfg, cfg.sac, snap.folder)
        ema = None
        if cfg.ema:
            ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
            if snap is not None and snap.ema is not None:
                ema.module.load_state_dict(snap.ema)
            ema.module.eval()

        import timm.optim
        from timm.data import Mixup

        optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
        factor, total_steps = _schedule(cfg, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        dtype = amp_dtype(cfg.amp)
        use_amp = dtype is not None and d.device.type == "cuda"
        amp = dict(device_type=d.device.type, dtype=dtype or torch.bfloat16, enabled=use_amp)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
        history, step = [], start_epoch * steps_per_epoch
        if state is not None:
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            if state.scaler:
                scaler.load_state_dict(state.scaler)
            history, step = list(state.history), state.step
            own = state.own(d.rank, d.world)
            if own is not None:
                set_rng_state(own.rng)
            else:
                seed_everything(cfg.seed + d.rank + 1000 * start_epoch)
        mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                          label_smoothing=cfg.label_smoothing, num_classes=len(classes))
        net = model
        if d.world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

        workers = cfg.workers if cfg.workers is not None else (0 if d.device.type == "cpu" else min(8, os.cpu_count() or 1))
        loader_args = dict(num_workers=workers, pin_memory=d.device.type == "cuda", persistent_workers=workers > 0)
        sampler = DistributedSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
        batches = ResumableSampler(sampler)
        train_loader = DataLoader(train_set, batch_size=per_rank, sampler=batches, drop_last=True, **loader_args)
        val_loader = DataLoader(Subset(val_set, range(d.rank, len(val_set), d.world)), batch_size=per_rank, **loader_args)

        meta = CheckpointMeta(model_name=cfg.model, model_kwargs=model_kwargs, sac_config=sac_cfg, class_names=classes,
                              preprocess=preprocess_for(cfg.data, img_size).to_dict(),
                              data=DataSpec(name=cfg.data, folder=cfg.data_dir, seed=cfg.seed, holdout=cfg.holdout,
                                            image_size=img_size))
        good = snap.folder.name if snap is not None and snap.folder != out else None
        saver = Checkpointer(out, meta, good=good) if d.main else None
        if saver is not None and snap is not None and snap.folder != out and snap.batch == 0:
            saver.redeploy(snap.folder)  # a kill between the commit and the copy to last.safetensors
        last_save, in_row = time.monotonic(), 0
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            batches.skip, nonfinite = 0, 0
            if epoch == start_epoch and snap is not None and snap.batch > 0:  # an interrupted epoch
                partial, nonfinite = resume_epoch(snap, batches, per_rank, d)
                loss_sum += partial
            first = batches.skip // per_rank
            epoch_rng = rng_state()
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, total=steps_per_epoch,
                       initial=first, disable=not (d.main and sys.stderr.isatty()))
            for i, (x, y) in enumerate(bar, start=first):
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                if mixup is not None:
                    x, target = mixup(x, y)
                elif cfg.label_smoothing > 0:
                    target = F.one_hot(y, len(classes)).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / len(classes)
                else:
                    target = y
                with torch.autocast(**amp):
                    if is_sac:
                        logits_ee, logits_sac = net(x, full_window=step / total_steps < cfg.select_after)
                        loss = sac_loss(logits_ee.float(), logits_sac.float(), target,
                                        kl_weight=cfg.kl_weight, kl_tau=cfg.kl_tau)
                    else:
                        loss = cross_entropy(net(x).float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                norm = None  # with fp16 loss scaling, inf gradients are the scaler's to skip
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                elif not scaler.is_enabled():
                    norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                due = bool(cfg.checkpoint_minutes) and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
                bad, due = _step_flags(loss, None if scaler.is_enabled() else norm, due, d)
                if bad:  # skip the update; the schedule goes on with the data
                    optimizer.zero_grad(set_to_none=True)
                    if scaler.is_enabled():
                        scaler.update(scaler.get_scale())
                    nonfinite, in_row = nonfinite + 1, in_row + 1
                    if in_row >= cfg.max_nonfinite:
                        raise ValueError(f"training stopped at step {step + 1} (epoch {epoch + 1}): the loss or "
                                         f"gradient was not finite for {in_row} steps in a row; the last checkpoint "
                                         f"({out / 'checkpoints'}) is intact — lower --lr or check the data, then --resume")
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    in_row = 0
                scheduler.step()
                step += 1
                if not bad:
                    if ema is not None:
                        ema.update(model, step=step)
                    loss_sum += loss.detach()
                if cfg.log_every and step % cfg.log_every == 0:
                    value = all_mean(loss, d)
                    if d.main:
                        append_json(out / "steps.jsonl", {"step": step, "epoch": epoch + 1, "loss": value,
                                                          "lr": scheduler.get_last_lr()[0]})
                if i % 10 == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                every = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                if (every or due) and i + 1 < steps_per_epoch:  # the epoch end saves anyway
                    save_everywhere(saver, d, model, None if ema is None else ema.module,
                                    shared_state(optimizer, scheduler, scaler, step, d, history, nonfinite),
                                    RankState(rng_state(), epoch_rng=epoch_rng, loss_sum=loss_sum.cpu()),
                                    step=step, epoch=epoch, batch=i + 1)
                    last_save = time.monotonic()
            bar.close()
            trained = steps_per_epoch - nonfinite  # every rank skipped the same steps
            train_loss = all_mean(loss_sum, d) / trained if trained else math.nan
            if not math.isfinite(train_loss):
                raise ValueError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower --lr")
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                      "lr": scheduler.get_last_lr()[0], "steps": step,
                                      "nonfinite_steps": nonfinite, "skipped_files": skipped_files}
            last = epoch + 1 == cfg.epochs
            deployed = model if ema is None else ema.module
            if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                record.update(_validate(deployed, val_loader, d, amp))
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            save_everywhere(saver, d, model, None if ema is None else ema.module,
                            shared_state(optimizer, scheduler, scaler, step, d, history, 0),
                            RankState(rng_state()),
                            step=step, epoch=epoch + 1, batch=0, record=record)
            last_save = time.monotonic()
            if d.main:
                append_json(out / "metrics.jsonl", record)
                print(_summary(record, cfg.epochs), flush=True)
        if d.world > 1:
            dist.barrier()
        return ckpt
    finally:
        teardown(d)


def _summary(r: dict[str, Any], epochs: int) -> str:
    vals = " ".join(f"{k.removeprefix('val_')} {v:.2f}%" for k, v in r.items() if k.startswith("val_"))
    return f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  lr {r['lr']:.2e}  {vals}  ({r['seconds']:.1f} s)"
