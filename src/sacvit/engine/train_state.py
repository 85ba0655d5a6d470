"""Training checkpoints as one unit: a folder per checkpoint, verified on load, the previous one kept.

Layout of a run folder ``OUT``::

    OUT/checkpoints/step-000001200/model.safetensors   trained weights + sacvit metadata
                                  /ema.safetensors     EMA weights (when EMA is on)
                                  /state.pt            optimizer, scheduler, AMP scaler, every RNG
                                                       state of every rank, sampler position,
                                                       partial epoch loss, epoch records
                                  /manifest.json       step, position, size and SHA-256 of each file
    OUT/checkpoints/latest                             name of the newest committed folder
    OUT/last.safetensors                               the weights to use, as of the last epoch end

A checkpoint is written into a hidden temporary folder, every file flushed to disk, the manifest
last; the folder is then renamed into place and ``latest`` atomically replaced — the commit. A
kill at any moment leaves the previous checkpoint as it was, and never pairs weights with the
optimizer state of another step. After a commit only the new checkpoint and the previous good
one (the one committed or resumed from before it) are kept.

:func:`load_latest` verifies every file against the manifest; a truncated, damaged or modified
checkpoint is refused and the previous good one used instead, and the caller is told. A failed
write (a full disk) removes the partial folder, keeps the previous checkpoint and raises
:class:`CheckpointWriteError`. ``state.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import Sampler

from ..config import SACConfig
from .checkpoint import (
    CheckpointError,
    atomic_write,
    fsync_dir,
    load_checkpoint,
    load_training_state,
    read_metadata,
    save_checkpoint,
    sha256_file,
    state_path,
)
from .distributed import Dist, set_rng_state

__all__ = ["CheckpointWriteError", "Checkpointer", "ResumableSampler", "Snapshot", "TRAIN_FORMAT", "has_checkpoint",
           "load_latest", "resume_or_start", "save_everywhere", "shared_state", "verify"]

TRAIN_FORMAT = "sacvit-train-checkpoint/1"
FOLDER, POINTER, MANIFEST, STATE = "checkpoints", "latest", "manifest.json", "state.pt"
DEPLOYED = "last.safetensors"


#: What a failed write raises: the OS's own error, ``torch.save``'s (a ``RuntimeError`` from its zip
#: writer, e.g. "unexpected pos" on a full disk) and safetensors' (``SafetensorError``: "I/O error").
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""


@dataclass
class Snapshot:
    """A verified training checkpoint, loaded.

    Attributes:
        folder: the checkpoint folder (or the run folder for a sacvit 0.1 checkpoint pair).
        model: the model with the trained (not EMA) weights, on the CPU.
        meta: the checkpoint metadata (:func:`~.checkpoint.read_metadata`).
        ema: the EMA weights, or ``None``.
        state: what ``state.pt`` holds (optimizer, scheduler, scaler, rng, epoch_rng, loss_sum,
            nonfinite, history, step, world_size).
        epoch: epochs finished.
        batch: batches of epoch ``epoch`` already trained (0 at an epoch end).
    """

    folder: Path
    model: nn.Module
    meta: dict[str, Any]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]
    epoch: int
    batch: int

    def rank_state(self, d: Dist) -> dict[str, Any] | None:
        """This rank's own saved state (``rng``, ``epoch_rng``, ``loss_sum``), or ``None`` when the
        checkpoint was written by another number of processes."""
        ranks = self.state.get("ranks") or []
        return ranks[d.rank] if self.state.get("world_size") == d.world and len(ranks) == d.world else None

    def resume_epoch(self, sampler: "ResumableSampler", per_rank: int, d: Dist) -> tuple[Any, int]:
        """Set up the interrupted epoch: skip its finished batches; restore the RNG of the epoch's
        start (the DataLoader draws its seeds from it), then, as the first batch is loaded, the
        RNG of the checkpoint.

        Returns:
            This rank's loss sum over the finished batches (the mean of all ranks' sums for
            another number of processes) and the number of non-finite steps so far.
        """
        sampler.skip = per_rank * self.batch
        own, nonfinite = self.rank_state(d), self.state.get("nonfinite", 0)
        if own is None:
            sums = [r["loss_sum"] for r in self.state["ranks"]]
            return sum(sums) / len(sums), nonfinite
        if own["epoch_rng"] is not None:
            set_rng_state(own["epoch_rng"])
        sampler.on_start = functools.partial(set_rng_state, own["rng"])
        return own["loss_sum"], nonfinite


def _name(step: int) -> str:
    return f"step-{step:09d}"


def has_checkpoint(out: str | Path) -> bool:
    """Whether ``out`` holds a training checkpoint to resume from (or a sacvit 0.1 pair)."""
    out = Path(out)
    return (out / FOLDER / POINTER).is_file() or any((out / FOLDER).glob("step-*")) or \
        state_path(out / DEPLOYED).is_file()


class Checkpointer:
    """Writes the checkpoints of one run (rank 0 only).

    Args:
        out: the run folder.
        model_name, model_kwargs, sac_cfg, class_names, preprocess: the metadata of the weights files.
        good: the folder name of the checkpoint resumed from (kept as the previous good one).
    """

    def __init__(self, out: Path, *, model_name: str, model_kwargs: dict[str, Any], sac_cfg: Any,
                 class_names: list[str], preprocess: dict[str, Any] | None = None, good: str | None = None) -> None:
        self.root = Path(out) / FOLDER
        self.out = Path(out)
        self.meta = dict(model_name=model_name, model_kwargs=model_kwargs, sac_cfg=sac_cfg, class_names=class_names,
                         preprocess=preprocess)
        self.good = good

    def save(self, model: nn.Module, ema: nn.Module | None, state: dict[str, Any], *, step: int, epoch: int,
             batch: int, record: dict[str, Any] | None = None) -> Path:
        """Write and commit one checkpoint; at an epoch end (``record`` given) also ``OUT/last.safetensors``.

        Args:
            model: the trained model; ema: its EMA module or ``None``.
            state: everything else resuming needs (tensors and plain values only).
            step: optimizer steps done; epoch: epochs finished; batch: batches of the next epoch done.
            record: the epoch's metrics, stored in the weights' metadata, at an epoch end.

        Returns:
            The committed folder.

        Raises:
            CheckpointWriteError: writing failed (full disk, …); the previous checkpoint is intact.
        """
        name = _name(step)
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        final = self.root / name
        meta = dict(self.meta, epoch=epoch, extra_metrics=record or {})
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_checkpoint(tmp / "model.safetensors", model, **meta)
            if ema is not None:
                save_checkpoint(tmp / "ema.safetensors", ema, **meta)
            atomic_write(tmp / STATE, lambda path: torch.save({"format": TRAIN_FORMAT, **state}, path))
            files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
            manifest = {"format": TRAIN_FORMAT, "step": step, "epoch": epoch, "batch": batch, "files": files,
                        "deployed": "ema.safetensors" if ema is not None else "model.safetensors"}
            atomic_write(tmp / MANIFEST, lambda path: Path(path).write_text(json.dumps(manifest, indent=1) + "\n"))
            if final.exists():  # left by a run that fell back to an older checkpoint
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.root)
            atomic_write(self.root / POINTER, lambda path: Path(path).write_text(name + "\n"))
            if record is not None:
                self._deploy(final / manifest["deployed"])
        except WRITE_ERRORS as err:  # torch.save and safetensors report a failed write as their own types
            shutil.rmtree(tmp, ignore_errors=True)
            previous = f"the previous checkpoint {self.root / self.good} is intact" if self.good else \
                "no earlier checkpoint exists"
            reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
            raise CheckpointWriteError(f"cannot write checkpoint {final}: {reason} "
                                       f"({_free_space(self.root)} free); "
                                       f"{previous} — free space and run again with --resume") from err
        self._prune(keep={name, self.good})
        self.good = name
        return final

    def _deploy(self, source: Path) -> None:
        atomic_write(self.out / DEPLOYED, lambda path: shutil.copyfile(source, path))

    def redeploy(self, folder: Path) -> None:
        """Make ``OUT/last.safetensors`` hold the weights of epoch-end checkpoint ``folder``.

        A file with the same weights is kept as it is (its metadata may have been updated since).
        """
        source = folder / json.loads((folder / MANIFEST).read_text())["deployed"]
        try:
            if read_metadata(self.out / DEPLOYED)["weights_sha256"] == read_metadata(source)["weights_sha256"]:
                return
        except ValueError:  # missing or unreadable: write it
            pass
        self._deploy(source)

    def _prune(self, keep: set[str | None]) -> None:
        for path in self.root.iterdir():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)


def verify(folder: str | Path) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest (every file's size and SHA-256).

    Returns:
        The manifest.

    Raises:
        CheckpointError: a missing, truncated or modified file, or an unreadable manifest.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: no readable {MANIFEST} (incomplete or damaged checkpoint)") from err
    if not isinstance(manifest, dict) or manifest.get("format") != TRAIN_FORMAT or \
            not isinstance(manifest.get("files"), dict) or STATE not in manifest["files"]:
        raise CheckpointError(f"{folder}/{MANIFEST} is not a sacvit training checkpoint manifest")
    for key in ("step", "epoch", "batch"):
        if not isinstance(manifest.get(key), int) or manifest[key] < 0:
            raise CheckpointError(f"{folder}/{MANIFEST}: corrupt '{key}'")
    for name, entry in manifest["files"].items():
        path = folder / str(name)
        if not isinstance(entry, dict) or not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if path.stat().st_size != entry.get("bytes"):
            raise CheckpointError(f"{path} is truncated or damaged ({path.stat().st_size} bytes, "
                                  f"the manifest says {entry.get('bytes')})")
        if sha256_file(path) != entry.get("sha256"):
            raise CheckpointError(f"{path} fails its SHA-256 check (damaged or modified)")
    return manifest


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, a pickle that would run code, …
        raise CheckpointError(f"cannot read training state {path}: {' '.join(str(err).split())[:300]}") from err
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a sacvit training state")
    return state


def _load(folder: Path, expected_model: str | None) -> Snapshot:
    from safetensors.torch import load_file

    manifest = verify(folder)
    model, meta = load_checkpoint(folder / "model.safetensors", expected_model=expected_model)
    ema = load_file(str(folder / "ema.safetensors")) if "ema.safetensors" in manifest["files"] else None
    return Snapshot(folder, model, meta, ema, _read_state(folder / STATE), manifest["epoch"], manifest["batch"])


def _legacy(out: Path, expected_model: str | None) -> Snapshot:
    """A sacvit 0.1 run: ``last.safetensors`` (EMA weights with EMA) + ``last.state.pt``."""
    path = out / DEPLOYED
    model, meta = load_checkpoint(path, expected_model=expected_model)
    state = load_training_state(path)
    ema = None
    if state.get("model") is not None:
        ema = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state["model"])
    metrics = out / "metrics.jsonl"
    history = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["epoch"] <= meta["epoch"]] \
        if metrics.is_file() else []
    if meta["metrics"] and (not history or history[-1]["epoch"] < meta["epoch"]):
        history.append(meta["metrics"])
    ranks = [{"rng": rng, "epoch_rng": None, "loss_sum": None} for rng in state.get("rng", [])]
    state.update(history=history, ranks=ranks, nonfinite=0)
    return Snapshot(out, model, meta, ema, state, meta["epoch"], 0)


def load_latest(out: str | Path, expected_model: str | None = None,
                say: Callable[[str], None] = print) -> Snapshot:
    """Load the newest good training checkpoint of run folder ``out``.

    The checkpoint named by ``checkpoints/latest`` is tried first, then the others, newest first;
    when one is refused, ``say`` is told which and why, and which one is used instead.

    Raises:
        CheckpointNotFoundError: nothing to resume.
        CheckpointError: every checkpoint is damaged (each one's reason in the message).
        ValueError: a checkpoint for another model than ``expected_model``.
    """
    from .checkpoint import CheckpointNotFoundError

    out = Path(out)
    root = out / FOLDER
    names = sorted((p.name for p in root.glob("step-*") if p.is_dir()), reverse=True) if root.is_dir() else []
    try:
        latest = (root / POINTER).read_text().strip()
    except OSError:
        latest = None
    if latest in names:
        names.remove(latest)
        names.insert(0, latest)
    if not names:
        if state_path(out / DEPLOYED).is_file():
            return _legacy(out, expected_model)
        raise CheckpointNotFoundError(f"nothing to resume: no checkpoint in {root}")
    refused = []
    for name in names:
        try:
            snap = _load(root / name, expected_model)
        except CheckpointError as err:
            refused.append(f"{name}: {err}")
            continue
        if refused:
            say(f"sacvit: refused checkpoint {refused[0]}; resuming from the previous good one {root / name}")
        return snap
    raise CheckpointError(f"no usable checkpoint in {root}: " + "; ".join(refused))


# ---------------------------------------------------------------------------------------- in the training loop
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
    if not restart and ((out / DEPLOYED).is_file() or (out / "metrics.jsonl").is_file() or has_checkpoint(out)):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or pick another --out-dir")
    return None


def shared_state(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, step: int, d: Dist,
                 history: list[dict[str, Any]], nonfinite: int) -> dict[str, Any]:
    """The part of a checkpoint's training state that is the same on every rank."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "world_size": d.world,
            "history": list(history), "nonfinite": nonfinite}


def save_everywhere(saver: Checkpointer | None, d: Dist, model: nn.Module, ema: nn.Module | None,
                    shared: dict[str, Any], local: dict[str, Any], **position: Any) -> None:
    """Called by every rank: gathers each rank's own state (RNG, partial loss), rank 0 writes.

    Raises:
        CheckpointWriteError: on every rank when rank 0 could not write (so that none hangs).
    """
    ranks = [local] * d.world
    if d.world > 1:
        dist.all_gather_object(ranks, local)
    error = [None]
    if d.main:
        try:
            saver.save(model, ema, {**shared, "ranks": ranks}, **position)
        except CheckpointWriteError as err:
            error = [str(err)]
    if d.world > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise CheckpointWriteError(error[0])


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


def check_resumed_sac(sac_cfg: SACConfig, sac: dict[str, Any], select_after: float | None, ckpt: Path) -> None:
    """On resume the checkpoint defines the model: ``--sac`` (``sac``) may only repeat its values.

    ``--select-after`` only affects training, so a new value is applied to ``sac_cfg``.

    Raises:
        ValueError: ``sac`` changes the SAC configuration of checkpoint ``ckpt``.
    """
    wanted = SACConfig.from_dict({**sac_cfg.to_dict(), **sac})
    if dataclasses.replace(wanted, select_after=sac_cfg.select_after) != sac_cfg:
        changed = {k: v for k, v in sac.items() if getattr(sac_cfg, k) != getattr(wanted, k)}
        raise ValueError(f"{ckpt} was trained with a different SAC configuration than --sac {changed}")
    sac_cfg.select_after = select_after if select_after is not None else wanted.select_after
