"""Self-describing checkpoints: safetensors weights + typed JSON metadata, written atomically.

A checkpoint ``NAME.safetensors`` holds the model weights and, in the safetensors header
metadata, a :class:`CheckpointMeta`: everything needed to rebuild and run the model — the timm
model name and keyword arguments, the SAC-ViT configuration (``None`` for a plain ViT), the class
names, the data the run was trained on (:class:`DataSpec`), the evaluation preprocessing, the
record of a threshold calibration, the epoch and its metrics, and ``weights_sha256``, a digest of
the tensors (:func:`weights_digest`) that :func:`load_checkpoint` verifies so that a damaged or
modified weights file is refused. This module is the one place that reads and writes these keys.

Every file is written to a temporary name in the same folder, flushed to disk and moved into
place with :func:`os.replace`, so a crash never leaves a half-written checkpoint. Training
checkpoints (weights + optimizer and RNG state as one unit) are built from these files by
:mod:`.train_state`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import safetensors.torch  # called through the module, so a patched writer (a full-disk test) is used
from torch import nn

from .. import model as _registers_sacvit_models  # noqa: F401  (timm must know the sacvit_* names)
from ..meta import FORMAT, CheckpointError, CheckpointMeta, DataSpec, _one_line, read_header

__all__ = ["CheckpointError", "CheckpointMeta", "CheckpointNotFoundError", "DataSpec", "FORMAT", "atomic_write",
           "fsync_dir", "load_checkpoint", "read_metadata", "save_checkpoint", "sha256_file", "update_metadata",
           "weights_digest"]



class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint file is missing (both a ``FileNotFoundError`` and a ``ValueError``)."""


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


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical tensors (NaNs included)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))




def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights (a DDP wrapper is unwrapped) and ``meta`` to ``path``, atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    header = meta.to_header()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    header["weights_sha256"] = weights_digest(weights)
    atomic_write(path, lambda tmp: safetensors.torch.save_file(weights, tmp, metadata=header))
    return path


def _raw_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    return read_header(path)


def read_metadata(path: str | Path) -> CheckpointMeta:
    """The :class:`CheckpointMeta` of a sacvit checkpoint, without loading the weights.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is not a readable sacvit checkpoint (message names the path).
    """
    path = Path(path)
    return CheckpointMeta.from_header(_raw_header(path), path)


def load_checkpoint(path: str | Path, expected_model: str | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The ``.safetensors`` checkpoint.
        expected_model: If given, the timm model name the checkpoint must be for.
        map_location: Device of the returned model.

    Returns:
        ``(model, meta)``: the model in eval mode with the weights loaded, and its metadata.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: Not a sacvit checkpoint, damaged (truncated, or weights that fail
            their SHA-256), or weights that do not fit the model; the message names the path.
        ValueError: A checkpoint for another model than ``expected_model``.
    """
    meta = read_metadata(path)
    name = meta.model_name
    if expected_model is not None and name != expected_model:
        raise ValueError(f"{path} is a checkpoint for model {name!r}, not {expected_model!r}")
    kwargs = dict(meta.model_kwargs)
    if meta.sac_config is not None:
        kwargs["sac"] = meta.sac_config
    try:
        weights = safetensors.torch.load_file(str(path))
    except Exception as err:  # truncated data section, …
        raise CheckpointError(f"{path}: cannot read the weights ({_one_line(err)}); the file is damaged") from err
    if meta.weights_sha256 is not None and weights_digest(weights) != meta.weights_sha256:
        raise CheckpointError(f"{path}: the weights do not match their recorded SHA-256; "
                              f"the file is damaged or was modified")
    try:
        with torch.device("meta"):  # shapes first, without allocating: damaged kwargs can ask for any size
            shapes = {k: v.shape for k, v in timm.create_model(name, **kwargs).state_dict().items()}
    except Exception as err:  # unknown model name, bad kwargs
        raise CheckpointError(f"{path}: cannot create model {name!r}: {_one_line(err)}") from err
    if shapes != {k: v.shape for k, v in weights.items()}:
        raise CheckpointError(f"{path}: weights do not fit model {name!r} with {meta.model_kwargs} "
                              f"(different parameter names or shapes)")
    try:
        model = timm.create_model(name, **kwargs)
        model.load_state_dict(weights, strict=True)
    except Exception as err:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {_one_line(err)}") from err
    return model.to(map_location).eval(), meta


def update_metadata(path: str | Path, *, threshold: float | None = None,
                    calibration: dict[str, Any] | None = None,
                    preprocess: dict[str, Any] | None = None) -> CheckpointMeta:
    """Rewrite a checkpoint's metadata in place, atomically, with the same weights.

    The tensors are read, written with the new metadata to a temporary file in the same folder,
    read back and compared with the originals bit for bit, and only then moved over ``path``.

    Args:
        path: a checkpoint written by :func:`save_checkpoint`.
        threshold: a new default exit threshold η (``sac_config.threshold``, or a cascade's).
        calibration: the record of how ``threshold`` was chosen.
        preprocess: the evaluation preprocessing.

    Returns:
        The new metadata.

    Raises:
        ValueError: not a sacvit checkpoint, a threshold for a plain ViT, or weights that changed.
    """
    path = Path(path)
    meta = read_metadata(path)
    if threshold is not None:
        if meta.threshold is None:
            raise ValueError(f"{path} holds a plain ViT ({meta.model_name}): it has no exit threshold")
        meta = meta.with_threshold(threshold)
    if calibration is not None:
        meta = meta.replace(calibration=calibration)
    if preprocess is not None:
        meta = meta.replace(preprocess=preprocess)
    header = {**meta.to_header(), "weights_sha256": meta.weights_sha256} if meta.weights_sha256 else meta.to_header()
    weights = safetensors.torch.load_file(str(path))

    def write(tmp: str) -> None:
        safetensors.torch.save_file(weights, tmp, metadata=header)
        again = safetensors.torch.load_file(tmp)
        if again.keys() != weights.keys() or not all(_same_bits(again[k], v) for k, v in weights.items()):
            raise ValueError(f"{path}: the rewritten weights differ from the original; nothing was changed")

    atomic_write(path, write)
    return read_metadata(path)
