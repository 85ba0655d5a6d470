"""Training checkpoints as one unit: a folder per checkpoint, verified on load, the previous one kept.

Layout of a run folder ``OUT``::

    OUT/checkpoints/step-000001200/model.safetensors   trained weights + sacvit metadata
                                  /ema.safetensors     EMA weights (when EMA is on)
                                  /state.pt            a TrainState: optimizer, scheduler, AMP scaler,
                                                       every RNG state of every rank, partial
                                                       epoch loss, epoch records
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
:class:`CheckpointWriteError`. ``state.pt`` is read with ``torch.load(weights_only=True)``: a
:class:`TrainState` is stored as plain tensors and values, its keys written and read only here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from torch import nn

from .checkpoint import (CheckpointError, CheckpointMeta, CheckpointNotFoundError, atomic_write, fsync_dir,
                         load_checkpoint, read_metadata, save_checkpoint, sha256_file)
from .run_files import CHECKPOINT

__all__ = ["CheckpointWriteError", "Checkpointer", "RankState", "Snapshot", "TRAIN_FORMAT", "TrainState",
           "has_checkpoint", "load_latest", "verify"]

TRAIN_FORMAT = "sacvit-train-checkpoint/1"
FOLDER, POINTER, MANIFEST, STATE = "checkpoints", "latest", "manifest.json", "state.pt"


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


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if key not in data:
        raise CheckpointError(f"no '{key}'")
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        names += " or None" if optional else ""
        raise CheckpointError(f"'{key}' has type {type(value).__name__}, expected {names}")
    return value


def _count(data: dict[str, Any], key: str, least: int = 0) -> int:
    value = _get(data, key, int)
    if value < least:
        raise CheckpointError(f"'{key}' is {value}, less than {least}")
    return value


@dataclass
class RankState:
    """One process's own part of a :class:`TrainState`.

    Attributes:
        rng: every RNG state of the process (:func:`sacvit.engine.distributed.rng_state`).
        epoch_rng: mid-epoch: the RNG state at the start of the epoch (the DataLoader draws its
            seeds from it); ``None`` at an epoch end.
        loss_sum: mid-epoch: the sum of the epoch's finite losses so far (a scalar tensor);
            ``None`` at an epoch end.
    """

    rng: dict[str, Any]
    epoch_rng: dict[str, Any] | None = None
    loss_sum: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rng": self.rng, "epoch_rng": self.epoch_rng, "loss_sum": self.loss_sum}

    @classmethod
    def from_dict(cls, data: Any) -> "RankState":
        """Raises CheckpointError: not a dict, or a missing key or wrongly typed value (named)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"a {type(data).__name__}, not a dict")
        return cls(rng=_get(data, "rng", dict), epoch_rng=_get(data, "epoch_rng", dict, optional=True),
                   loss_sum=_get(data, "loss_sum", torch.Tensor, optional=True))


@dataclass
class TrainState:
    """What a training checkpoint holds besides the weights (``state.pt``).

    Attributes:
        optimizer: the optimizer's ``state_dict()``.
        scheduler: the LR scheduler's ``state_dict()``.
        step: optimizer steps done (skipped non-finite steps included).
        world_size: the number of processes that wrote it.
        history: the records of the finished epochs (the lines of ``metrics.jsonl``).
        nonfinite: non-finite steps skipped so far in the current epoch.
        scaler: the AMP gradient scaler's ``state_dict()``, or ``None`` when it is off.
        ranks: every process's own state, by rank (``world_size`` of them in a saved checkpoint).
    """

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    step: int
    world_size: int
    history: list[dict[str, Any]] = field(default_factory=list)
    nonfinite: int = 0
    scaler: dict[str, Any] | None = None
    ranks: list[RankState] = field(default_factory=list)

    def own(self, rank: int, world: int) -> RankState | None:
        """Process ``rank``'s state, or ``None`` when the state was written by another number of processes."""
        return self.ranks[rank] if self.world_size == world and len(self.ranks) == world else None

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and values (``torch.load(weights_only=True)`` reads them), with the format tag."""
        return {"format": TRAIN_FORMAT, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler, "step": self.step, "world_size": self.world_size,
                "history": list(self.history), "nonfinite": self.nonfinite,
                "ranks": [r.to_dict() for r in self.ranks]}

    @classmethod
    def from_dict(cls, data: Any) -> "TrainState":
        """The inverse of :meth:`to_dict`.

        Raises:
            CheckpointError: not a sacvit training state, or a missing key or wrongly typed value
                (named in the message).
        """
        if not isinstance(data, dict) or data.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"not a sacvit training state (no format '{TRAIN_FORMAT}')")
        history = _get(data, "history", list)
        if not all(isinstance(r, dict) for r in history):
            raise CheckpointError("'history' holds something else than epoch records")
        ranks = []
        for i, entry in enumerate(_get(data, "ranks", list)):
            try:
                ranks.append(RankState.from_dict(entry))
            except CheckpointError as err:
                raise CheckpointError(f"'ranks' entry {i}: {err}") from None
        state = cls(optimizer=_get(data, "optimizer", dict), scheduler=_get(data, "scheduler", dict),
                    step=_count(data, "step"), world_size=_count(data, "world_size", least=1), history=history,
                    nonfinite=_count(data, "nonfinite"), scaler=_get(data, "scaler", dict, optional=True), ranks=ranks)
        if len(ranks) != state.world_size:
            raise CheckpointError(f"{len(ranks)} 'ranks' entries for a world size of {state.world_size}")
        return state


@dataclass
class Snapshot:
    """A verified training checkpoint, loaded.

    Attributes:
        folder: the checkpoint folder.
        model: the model with the trained (not EMA) weights, on the CPU.
        meta: the checkpoint metadata.
        ema: the EMA weights, or ``None``.
        state: what ``state.pt`` holds.
        epoch: epochs finished.
        batch: batches of epoch ``epoch`` already trained (0 at an epoch end).
    """

    folder: Path
    model: nn.Module
    meta: CheckpointMeta
    ema: dict[str, torch.Tensor] | None
    state: TrainState
    epoch: int
    batch: int


def _name(step: int) -> str:
    return f"step-{step:09d}"


def has_checkpoint(out: str | Path) -> bool:
    """Whether ``out`` holds a training checkpoint to resume from."""
    out = Path(out)
    return (out / FOLDER / POINTER).is_file() or any((out / FOLDER).glob("step-*"))


class Checkpointer:
    """Writes the checkpoints of one run (rank 0 only).

    Args:
        out: the run folder.
        meta: the metadata of the weights files (``epoch`` and ``metrics`` are set at each save).
        good: the folder name of the checkpoint resumed from (kept as the previous good one).
    """

    def __init__(self, out: Path, meta: CheckpointMeta, good: str | None = None) -> None:
        self.root = Path(out) / FOLDER
        self.out = Path(out)
        self.meta = meta
        self.good = good

    def save(self, model: nn.Module, ema: nn.Module | None, state: TrainState, *, step: int, epoch: int,
             batch: int, record: dict[str, Any] | None = None) -> Path:
        """Write and commit one checkpoint; at an epoch end (``record`` given) also ``OUT/last.safetensors``.

        Args:
            model: the trained model; ema: its EMA module or ``None``.
            state: everything else resuming needs.
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
        meta = self.meta.replace(epoch=epoch, metrics=record or {})
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_checkpoint(tmp / "model.safetensors", model, meta)
            if ema is not None:
                save_checkpoint(tmp / "ema.safetensors", ema, meta)
            atomic_write(tmp / STATE, lambda path: torch.save(state.to_dict(), path))
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
        atomic_write(self.out / CHECKPOINT, lambda path: shutil.copyfile(source, path))

    def redeploy(self, folder: Path) -> None:
        """Make ``OUT/last.safetensors`` hold the weights of epoch-end checkpoint ``folder``.

        A file with the same weights is kept as it is (its metadata may have been updated since).
        """
        source = folder / json.loads((folder / MANIFEST).read_text())["deployed"]
        try:
            if read_metadata(self.out / CHECKPOINT).weights_sha256 == read_metadata(source).weights_sha256:
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


def _read_state(path: Path) -> TrainState:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, a pickle that would run code, …
        raise CheckpointError(f"cannot read training state {path}: {' '.join(str(err).split())[:300]}") from err
    if not isinstance(data, dict) or data.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a sacvit training state")
    try:
        return TrainState.from_dict(data)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: malformed training state: {err}") from None


def _load(folder: Path, expected_model: str | None) -> Snapshot:
    from safetensors.torch import load_file

    manifest = verify(folder)
    model, meta = load_checkpoint(folder / "model.safetensors", expected_model=expected_model)
    ema = load_file(str(folder / "ema.safetensors")) if "ema.safetensors" in manifest["files"] else None
    state = _read_state(folder / STATE)
    if manifest["batch"] and any(r.loss_sum is None for r in state.ranks):
        raise CheckpointError(f"{folder / STATE}: malformed training state: no partial loss in a mid-epoch checkpoint")
    return Snapshot(folder, model, meta, ema, state, manifest["epoch"], manifest["batch"])


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


