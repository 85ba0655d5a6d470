"""Self-describing checkpoints: safetensors weights + JSON metadata, and a training-state sidecar.

A checkpoint ``NAME.safetensors`` holds the model weights and, in the safetensors header
metadata, everything needed to rebuild the model with ``timm.create_model``: the model name, its
keyword arguments, the SAC-ViT configuration (or none for a plain ViT), the class names, the
number of finished epochs and the metrics of that epoch; optionally the evaluation preprocessing
(:class:`~sacvit.data.preprocess.Preprocess` as a dict) and the record of a threshold
calibration (:func:`update_metadata` stores a calibrated η as ``sac_config["threshold"]``). When an optimizer is given, a sidecar
``NAME.state.pt`` holds the optimizer, scheduler and RNG states; it contains only tensors and
plain Python values and is always read with ``torch.load(weights_only=True)``. (That pair is
sacvit 0.1's training format, still read to resume old runs; training now writes the one-unit
checkpoint folders of :mod:`.train_state`.)

Every file is written to a temporary name in the same folder, flushed to disk and moved into
place with :func:`os.replace`, so a crash never leaves a half-written checkpoint. The metadata
also holds ``weights_sha256``, a digest of the tensors (:func:`weights_digest`) that
:func:`load_checkpoint` verifies, so a damaged or modified weights file is refused. Training
checkpoints (weights + optimizer and RNG state as one unit) are built from these files by
:mod:`.train_state`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import SACConfig

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "FORMAT",
    "atomic_write",
    "sha256_file",
    "weights_digest",
    "load_checkpoint",
    "load_training_state",
    "read_metadata",
    "save_checkpoint",
    "state_path",
    "update_metadata",
]

FORMAT = "sacvit-checkpoint/1"


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint file is missing (both a ``FileNotFoundError`` and a ``ValueError``)."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, of a foreign format or fails its SHA-256 check."""


def state_path(path: str | Path) -> Path:
    """The training-state sidecar of a checkpoint: ``last.safetensors`` → ``last.state.pt``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".state.pt")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_name)`` then move the finished file to ``path`` (same folder, atomic).

    The temporary file is flushed to disk before the rename and removed on any error (a full
    disk included), so ``path`` is either the old file or the complete new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every name, dtype, shape and the raw bytes, in name order.

    Independent of the file layout, so it survives a metadata-only rewrite of the file.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    sac_cfg: SACConfig | dict[str, Any] | None,
    class_names: list[str],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int = 0,
    extra_metrics: dict[str, Any] | None = None,
    extra_state: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` (safetensors), atomically.

    Args:
        path: Destination, conventionally ``*.safetensors``.
        model: The model (a DDP wrapper is unwrapped).
        model_name: timm name to rebuild it with, e.g. ``"sacvit_demo_patch8_112"``.
        model_kwargs: ``timm.create_model`` keyword arguments except ``sac`` (JSON-serialisable).
        sac_cfg: The SAC-ViT configuration, or ``None`` for a plain ViT.
        class_names: Class names, index = class id.
        optimizer: If given, a sidecar :func:`state_path` with the optimizer state is written.
        scheduler: LR scheduler whose ``state_dict`` goes into the sidecar.
        epoch: Number of finished training epochs.
        extra_metrics: JSON-serialisable metrics stored in the metadata.
        extra_state: More sidecar entries (tensors and plain Python values only), e.g. RNG states.
        preprocess: How evaluation images are made (``Preprocess.to_dict()``).
        calibration: The record of a threshold calibration (see :func:`update_metadata`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if isinstance(sac_cfg, SACConfig):
        sac_cfg = sac_cfg.to_dict()
    metadata = {
        "format": FORMAT,
        "model_name": model_name,
        "model_kwargs": json.dumps(model_kwargs),
        "sac_config": json.dumps(sac_cfg),
        "class_names": json.dumps(list(class_names)),
        "epoch": str(int(epoch)),
        "metrics": json.dumps(extra_metrics or {}),
    }
    if preprocess is not None:
        metadata["preprocess"] = json.dumps(preprocess)
    if calibration is not None:
        metadata["calibration"] = json.dumps(calibration)
    if optimizer is not None:
        state: dict[str, Any] = {"format": FORMAT, "epoch": int(epoch), "optimizer": optimizer.state_dict(),
                                 "scheduler": None if scheduler is None else scheduler.state_dict()}
        state.update(extra_state or {})
        atomic_write(state_path(path), lambda tmp: torch.save(state, tmp))
    weights = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    metadata["weights_sha256"] = weights_digest(weights)
    atomic_write(path, lambda tmp: save_file(weights, tmp, metadata=metadata))
    return path


_FIELDS = {"model_kwargs": dict, "sac_config": (dict, type(None)), "class_names": list, "metrics": dict}
_OPTIONAL = {"preprocess": (dict, type(None)), "calibration": (dict, type(None))}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a sacvit checkpoint, without loading the weights.

    Returns:
        ``model_name``, ``model_kwargs``, ``sac_config`` (dict or ``None``), ``class_names``,
        ``epoch``, ``metrics``, ``weights_sha256`` (``None`` for files written before sacvit
        recorded it), ``preprocess`` and ``calibration`` (dicts, ``None`` when not recorded) and
        ``path``.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is not a readable sacvit checkpoint (message names the path).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as err:  # not safetensors, truncated header, …
        raise CheckpointError(f"{path} is not a sacvit checkpoint (cannot read a safetensors header: "
                              f"{_one_line(err)})") from err
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a sacvit checkpoint (no '{FORMAT}' metadata; "
                              f"for backbone weights such as DeiT use --init instead)")
    try:
        meta = {key: json.loads(raw[key]) for key in _FIELDS}
        meta.update({key: json.loads(raw[key]) if key in raw else None for key in _OPTIONAL})
        meta.update(model_name=raw["model_name"], epoch=int(raw["epoch"]),
                    weights_sha256=raw.get("weights_sha256"), path=str(path))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt sacvit checkpoint metadata ({_one_line(err)})") from err
    wrong = [key for key, kind in {**_FIELDS, **_OPTIONAL}.items() if not isinstance(meta[key], kind)]
    if wrong or not all(isinstance(c, str) for c in meta["class_names"]):
        raise CheckpointError(f"{path}: corrupt sacvit checkpoint metadata (bad {', '.join(wrong) or 'class_names'})")
    return meta


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (safetensors and pickle errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def load_checkpoint(
    path: str | Path, expected_model: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The ``.safetensors`` checkpoint.
        expected_model: If given, the timm model name the checkpoint must be for.
        map_location: Device of the returned model.

    Returns:
        ``(model, meta)``: the model in eval mode with the weights loaded, and the metadata of
        :func:`read_metadata`.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: Not a sacvit checkpoint, damaged (truncated, or weights that fail
            their SHA-256), or weights that do not fit the model; the message names the path.
        ValueError: A checkpoint for another model than ``expected_model``.
    """
    import timm

    import sacvit  # noqa: F401  (registers the sacvit_* models with timm)
    from safetensors.torch import load_file

    meta = read_metadata(path)
    name = meta["model_name"]
    if expected_model is not None and name != expected_model:
        raise ValueError(f"{path} is a checkpoint for model {name!r}, not {expected_model!r}")
    kwargs = dict(meta["model_kwargs"])
    if meta["sac_config"] is not None:
        try:
            kwargs["sac"] = SACConfig.from_dict(meta["sac_config"])
        except ValueError as err:
            raise CheckpointError(f"{path}: corrupt sacvit checkpoint metadata (sac_config: {err})") from err
    try:
        weights = load_file(str(path))
    except Exception as err:  # truncated data section, …
        raise CheckpointError(f"{path}: cannot read the weights ({_one_line(err)}); the file is damaged") from err
    if meta["weights_sha256"] is not None and weights_digest(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{path}: the weights do not match their recorded SHA-256; "
                              f"the file is damaged or was modified")
    try:
        with torch.device("meta"):  # shapes first, without allocating: damaged kwargs can ask for any size
            shapes = {k: v.shape for k, v in timm.create_model(name, **kwargs).state_dict().items()}
    except Exception as err:  # unknown model name, bad kwargs
        raise CheckpointError(f"{path}: cannot create model {name!r}: {_one_line(err)}") from err
    if shapes != {k: v.shape for k, v in weights.items()}:
        raise CheckpointError(f"{path}: weights do not fit model {name!r} with {meta['model_kwargs']} "
                              f"(different parameter names or shapes)")
    try:
        model = timm.create_model(name, **kwargs)
        model.load_state_dict(weights, strict=True)
    except Exception as err:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {_one_line(err)}") from err
    return model.to(map_location).eval(), meta


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical tensors (NaNs included)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def update_metadata(path: str | Path, *, threshold: float | None = None,
                    calibration: dict[str, Any] | None = None,
                    preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite a checkpoint's metadata in place, atomically, with the same weights.

    The tensors are read, written with the new metadata to a temporary file in the same folder,
    read back and compared with the originals bit for bit, and only then moved over ``path``; the
    training-state sidecar is left untouched.

    Args:
        path: a checkpoint written by :func:`save_checkpoint`.
        threshold: a new default exit threshold η (``sac_config["threshold"]``; SAC-ViT only).
        calibration: the record of how ``threshold`` was chosen.
        preprocess: the evaluation preprocessing.

    Returns:
        The new metadata (as :func:`read_metadata`).

    Raises:
        ValueError: not a sacvit checkpoint, a threshold for a plain ViT, or weights that changed.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(path)
    meta = read_metadata(path)
    with safe_open(str(path), framework="pt") as f:
        raw = dict(f.metadata())
    if threshold is not None:
        if meta["sac_config"] is None:
            raise ValueError(f"{path} holds a plain ViT ({meta['model_name']}): it has no exit threshold")
        sac = dict(meta["sac_config"], threshold=float(threshold))
        SACConfig.from_dict(sac)  # still a valid configuration
        raw["sac_config"] = json.dumps(sac)
    if calibration is not None:
        raw["calibration"] = json.dumps(calibration)
    if preprocess is not None:
        raw["preprocess"] = json.dumps(preprocess)
    weights = load_file(str(path))

    def write(tmp: str) -> None:
        save_file(weights, tmp, metadata=raw)
        again = load_file(tmp)
        if again.keys() != weights.keys() or not all(_same_bits(again[k], v) for k, v in weights.items()):
            raise ValueError(f"{path}: the rewritten weights differ from the original; nothing was changed")

    atomic_write(path, write)
    return read_metadata(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read the training-state sidecar of checkpoint ``path`` (``weights_only=True``).

    Raises:
        CheckpointNotFoundError: The sidecar is missing.
        ValueError: It is unreadable or does not belong to the checkpoint's epoch.
    """
    side = state_path(path)
    if not side.is_file():
        raise CheckpointNotFoundError(f"training state not found: {side} (needed to resume {path})")
    try:
        state = torch.load(side, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read training state {side}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{side} is not a sacvit training state")
    epoch = read_metadata(path)["epoch"]
    if state.get("epoch") != epoch:
        raise ValueError(f"{side} is for epoch {state.get('epoch')} but {path} for epoch {epoch}; "
                         f"the run was interrupted while saving — restore a consistent pair")
    return state
