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
weights when EMA is on) with their metadata —, a copy of them as ``best.safetensors`` whenever
the epoch's validation score beats every earlier one (early stopping), and the training checkpoints of
:mod:`.train_state` (at epoch ends, every ``checkpoint_every`` steps and every
``checkpoint_minutes``), from which ``resume`` (or a torchrun restart) continues bit-identically.

Faults: a step whose loss or gradient norm is not finite is skipped (no update, no EMA step; the
schedule goes on) and counted; ``max_nonfinite`` in a row stop the run. The check costs one host
sync per step (and a two-element all-reduce under DDP, which also carries the time-based
checkpoint decision so that all ranks agree).

Structure: :func:`train` is the loop, top to bottom; :func:`~.train_setup.start_run` builds a run's objects (a
``Run``), :func:`_begin_epoch`, :func:`_step` and :func:`_end_epoch` are its parts. The order of
RNG draws, on which the bit-identical resume depends: seed, then a fresh run's initialisation
(:func:`start_run`); a resumed rank's RNG state once the optimiser is built; each epoch's start state
recorded before the DataLoader draws its seeds (:func:`_begin_epoch`); then, per step, Mixup/CutMix
and the model's drop-path (:func:`_loss`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.classes import count_images
from ..io.run_files import BEST, CHECKPOINT, METRICS, STEPS
from ..io.train_state import RankState
from .distributed import Dist, all_mean, rng_state, setup, teardown
from .logs import append_json
from .loss import cascade_loss, cross_entropy, sac_loss
from .resume import keep_best, resume_epoch, save_everywhere, shared_state
from .train_config import TrainConfig
from .train_setup import Run, check_config, start_run

__all__ = ["TrainConfig", "train", "CHECKPOINT", "BEST"]


# ---------------------------------------------------------------------------------------- validation
@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, d: Dist, amp: dict[str, Any]) -> dict[str, float]:
    """Top-1 (%) on this rank's shard, all-reduced: every stage of an adaptive model (SAC-ViT: EE
    and SAC; a cascade: each stage), else the plain model's."""
    from ..model import SACViT

    was_training = model.training
    model.eval()
    staged = hasattr(model, "predict_stages")
    n_stages = 1 if not staged else 2 if isinstance(model, SACViT) else len(model.stages)
    counts = torch.zeros(1 + n_stages, dtype=torch.float64, device=d.device)  # n, correct per stage
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(**amp):
            logits = [p.logits for p in model.predict_stages(x)] if staged else [model(x)]
        counts[0] += len(y)
        for i, z in enumerate(logits):
            counts[1 + i] += (z.argmax(-1) == y).sum()
    if d.world > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    top1 = [100 * float(c) / max(1.0, float(counts[0])) for c in counts[1:]]
    if isinstance(model, SACViT):
        return {"val_top1_ee": top1[0], "val_top1_sac": top1[1]}
    if staged:
        return {**{f"val_top1_stage{i}": v for i, v in enumerate(top1)}, "val_top1": top1[-1]}
    return {"val_top1": top1[0]}


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
class _Epoch:
    """The running totals of one epoch."""

    index: int  # 0-based
    t0: float
    loss_sum: torch.Tensor  # of the finite steps' losses
    nonfinite: int  # steps skipped
    rng: dict[str, Any]  # every RNG state at the epoch's start, before the DataLoader draws its seeds
    first: int  # the first batch to train (> 0 in a resumed epoch)


def _begin_epoch(run: Run, epoch: int) -> _Epoch:
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


def _loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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
        if run.is_cascade:
            return cascade_loss(tuple(z.float() for z in run.net(x)), target)
        return cross_entropy(run.net(x).float(), target)


def _grad_norm(run: Run) -> torch.Tensor | None:
    """Clip the gradients (``clip_grad``) and return their norm; ``None`` under fp16 loss scaling without
    clipping (inf gradients are then the scaler's to skip)."""
    if run.cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        return nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    if not run.scaler.is_enabled():
        return nn.utils.get_total_norm([p.grad for p in run.model.parameters() if p.grad is not None])
    return None


def _step(run: Run, ep: _Epoch, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, bool]:
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


def _log_step(run: Run, ep: _Epoch, loss: torch.Tensor) -> None:
    """Every ``log_every`` steps: the all-reduced loss to ``steps.jsonl``."""
    if run.cfg.log_every and run.step % run.cfg.log_every == 0:
        value = all_mean(loss, run.d)
        if run.d.main:
            append_json(run.out / STEPS, {"step": run.step, "epoch": ep.index + 1, "loss": value,
                                                  "lr": run.scheduler.get_last_lr()[0]})


def _save(run: Run, nonfinite: int, own: RankState, **position: Any) -> None:
    """Checkpoint (every rank takes part; rank 0 writes) at ``position`` (``epoch``, ``batch``, ``record``)."""
    save_everywhere(run.saver, run.d, run.model, run.ema_module,
                    shared_state(run.optimizer, run.scheduler, run.scaler, run.step, run.d, run.history, nonfinite),
                    own, step=run.step, **position)
    run.last_save = time.monotonic()


def _end_epoch(run: Run, ep: _Epoch) -> None:
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
        keep_best(run.out)
        append_json(run.out / METRICS, record)
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
        check_config(cfg, d)
        run = start_run(cfg, d, train_set, val_set)
        if d.main:
            print(_start_summary(run, given=train_set is not None), flush=True)
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


def _start_summary(run: Run, given: bool = False) -> str:
    """What a run is about to do, in two lines, before the first step (``given``: the datasets were
    passed to :func:`train` instead of built from ``cfg.data``)."""
    cfg, d, snap, classes = run.cfg, run.d, run.snap, run.classes
    train_set, val_set = run.train_loader.dataset, run.val_loader.dataset
    val_set = getattr(val_set, "dataset", val_set)  # the whole held-out set, not this rank's Subset
    data = f"the given data ({type(train_set).__name__})" if given else \
        cfg.data + (f" {cfg.data_dir}" if cfg.data_dir else "")
    shown = ", ".join(classes[:4]) + (f", … ({len(classes)})" if len(classes) > 4 else "")
    if snap is not None:
        at = f"epoch {snap.epoch} done" if snap.batch == 0 else f"epoch {snap.epoch + 1}, batch {snap.batch}"
        weights = f"resumed from {snap.folder} ({at})"
    elif cfg.init:
        weights = f"initialised from {cfg.init}"
    else:
        weights = f"random initialisation (seed {cfg.seed})"
    where = f"{d.world} processes on {d.device.type}" if d.world > 1 else f"device {d.device}"
    epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
    return (f"train: {cfg.model} on {data}: {count_images(len(train_set), 'training image')}, "
            f"{count_images(len(val_set), 'validation image')}, "
            f"{len(classes)} classes ({shown})\n"
            f"       {weights}; {where}; {epochs} × {run.steps_per_epoch} steps of {cfg.batch_size}; "
            f"writing {cfg.out_dir}")


def _summary(r: dict[str, Any], epochs: int) -> str:
    vals = " ".join(f"{k.removeprefix('val_')} {v:.2f}%" for k, v in r.items() if k.startswith("val_"))
    return f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  lr {r['lr']:.2e}  {vals}  ({r['seconds']:.1f} s)"
