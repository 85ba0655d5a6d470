"""Resuming a run inside the training loop: which checkpoint, each rank's state, the sampler position.

The checkpoint files themselves are :mod:`sacvit.io.train_state`'s; this module is the loop's side
of them (process ranks, RNG states, the mid-epoch sampler skip), kept next to the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..config import SACConfig
from ..io.train_state import (Checkpointer, CheckpointWriteError, RankState, Snapshot, TrainState,
                              has_checkpoint, load_latest)
from ..io.checkpoint import atomic_write, read_metadata
from ..io.run_files import BEST, CHECKPOINT, METRICS
from .distributed import Dist, seed_everything, set_rng_state
from .train_config import selection_score

__all__ = ["ResumableSampler", "check_resumed_sac", "restore_optimisation", "resume_epoch", "resume_or_start",
           "save_everywhere", "shared_state"]


def resume_epoch(snap: Snapshot, sampler: "ResumableSampler", per_rank: int, d: Dist) -> tuple[Any, int]:
    """Set up the interrupted epoch of ``snap``: skip its finished batches; restore the RNG of the epoch's
    start (the DataLoader draws its seeds from it), then, as the first batch is loaded, the
    RNG of the checkpoint.

    Returns:
        This rank's loss sum over the finished batches (the mean of all ranks' sums for
        another number of processes) and the number of non-finite steps so far.
    """
    sampler.skip = per_rank * snap.batch
    own, nonfinite = snap.state.own(d.rank, d.world), snap.state.nonfinite
    if own is None:
        sums = [r.loss_sum for r in snap.state.ranks]
        return sum(sums) / len(sums), nonfinite
    if own.epoch_rng is not None:
        set_rng_state(own.epoch_rng)
    sampler.on_start = functools.partial(set_rng_state, own.rng)
    return own.loss_sum, nonfinite


def resume_or_start(out: Path, model_name: str, resume: bool, d: Dist) -> Snapshot | None:
    """The checkpoint to continue from: with ``resume``, or by itself after a torchrun restart.

    Raises:
        ValueError: a fresh run (no ``resume``, no restart) into a folder that holds a run.
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if resume or (restart and has_checkpoint(out)):
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if d.main else (lambda msg: None)
        snap = load_latest(out, expected_model=model_name, say=say)
        if restart:
            say(f"sacvit: torchrun restart {restart}: resuming from {snap.folder} "
                f"(epoch {snap.epoch + 1}, batch {snap.batch})")
        return snap
    if not restart and ((out / CHECKPOINT).is_file() or (out / METRICS).is_file() or has_checkpoint(out)):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or pick another --out-dir")
    return None


def shared_state(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, step: int, d: Dist,
                 history: list[dict[str, Any]], nonfinite: int) -> TrainState:
    """The part of a checkpoint's training state that is the same on every rank (no ``ranks`` yet)."""
    return TrainState(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), step=step,
                      world_size=d.world, history=list(history), nonfinite=nonfinite,
                      scaler=scaler.state_dict() if scaler.is_enabled() else None)


def save_everywhere(saver: Checkpointer | None, d: Dist, model: nn.Module, ema: nn.Module | None,
                    shared: TrainState, local: RankState, **position: Any) -> None:
    """Called by every rank: gathers each rank's own state (RNG, partial loss) into ``shared``, rank 0 writes.

    Raises:
        CheckpointWriteError: on every rank when rank 0 could not write (so that none hangs).
    """
    ranks = [local] * d.world
    if d.world > 1:
        dist.all_gather_object(ranks, local)
    error = [None]
    if d.main:
        try:
            saver.save(model, ema, dataclasses.replace(shared, ranks=ranks), **position)
        except CheckpointWriteError as err:
            error = [str(err)]
    if d.world > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise CheckpointWriteError(error[0])


def keep_best(out: Path) -> None:
    """Copy ``OUT/last.safetensors`` to ``OUT/best.safetensors`` when its epoch's validation score
    (stored in its metadata) beats the best file's; ties keep the earlier epoch. Derived from the
    two files, so calling it again after a resume heals a kill between the checkpoint and the copy."""
    last, best = out / CHECKPOINT, out / BEST
    score = selection_score(read_metadata(last).metrics)
    if score is None:
        return
    if best.is_file():
        kept = selection_score(read_metadata(best).metrics)
        if kept is not None and kept >= score:
            return
    atomic_write(best, lambda path: shutil.copyfile(last, path))


class ResumableSampler(Sampler):
    """A sampler that leaves out the first ``skip`` indices of its sampler's order (mid-epoch resume).

    ``on_start``, when set, is called once when an iteration begins: after the DataLoader iterator
    has drawn its base seed from the global RNG and before the first sample is loaded — where a
    resumed epoch restores the RNG state of its checkpoint.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler, self.skip, self.on_start = sampler, 0, None

    def __iter__(self):
        if self.on_start is not None:
            self.on_start, start = None, self.on_start
            start()
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def check_resumed_sac(sac_config: SACConfig, sac: dict[str, Any], ckpt: Path) -> None:
    """On resume the checkpoint defines the model: ``--sac`` (``sac``) may only repeat its values.

    Raises:
        ValueError: ``sac`` changes the SAC configuration of checkpoint ``ckpt``.
    """
    wanted = SACConfig.from_dict({**sac_config.to_dict(), **sac})
    if wanted != sac_config:
        changed = {k: v for k, v in sac.items() if getattr(sac_config, k) != getattr(wanted, k)}
        raise ValueError(f"{ckpt} was trained with a different SAC configuration than --sac {changed}")


def restore_optimisation(snap: Snapshot, d: Dist, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                         seed: int) -> tuple[list[dict[str, Any]], int]:
    """Load ``snap``'s optimizer, scheduler and scaler states, then this rank's RNG state (for another
    number of processes: seed every RNG with ``seed + rank + 1000 · epoch``).

    Returns:
        The records of the finished epochs and the optimizer steps done.
    """
    state = snap.state
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    if state.scaler:
        scaler.load_state_dict(state.scaler)
    own = state.own(d.rank, d.world)
    if own is not None:
        set_rng_state(own.rng)
    else:
        seed_everything(seed + d.rank + 1000 * snap.epoch)
    return list(state.history), state.step
