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

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import SACConfig

__all__ = ["CheckpointError", "CheckpointMeta", "CheckpointNotFoundError", "DataSpec", "FORMAT", "atomic_write",
           "fsync_dir", "load_checkpoint", "read_metadata", "save_checkpoint", "sha256_file", "update_metadata",
           "weights_digest"]

FORMAT = "sacvit-checkpoint/1"


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint file is missing (both a ``FileNotFoundError`` and a ``ValueError``)."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, of a foreign format or fails its SHA-256 check."""


@dataclass(frozen=True)
class DataSpec:
    """The data a model was trained on, so that ``eval`` / ``calibrate`` can default to it.

    Attributes:
        name: dataset name (:data:`sacvit.data.DATASET_NAMES`).
        folder: the dataset folder as given (``None``: the dataset's default location).
        seed: the seed of the split and of generated data.
        holdout: training images held out (``None``: the dataset's default).
        image_size: the input side in pixels.
    """

    name: str
    folder: str | None = None
    seed: int = 0
    holdout: int | None = None
    image_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or "name" not in d or set(d) - names:
            raise ValueError(f"not a data spec: {d!r}")
        return cls(**d)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a sacvit checkpoint says about itself (its safetensors header, decoded and typed).

    Attributes:
        model_name: timm name to rebuild the model with, e.g. ``"sacvit_demo_patch8_112"``.
        model_kwargs: ``timm.create_model`` keyword arguments except ``sac``.
        sac_config: the SAC-ViT configuration (its ``threshold`` is the default η), ``None`` for a plain ViT.
        class_names: class names, index = class id.
        epoch: finished training epochs.
        metrics: the metrics of that epoch.
        data: what the model was trained on, or ``None`` when not recorded.
        preprocess: how evaluation images are made (``Preprocess.to_dict()``), or ``None``.
        calibration: the record of how η was chosen (``sacvit calibrate``), or ``None``.
        weights_sha256: digest of the tensors (:func:`weights_digest`); set when written.
        path: where it was read from (``None`` before it is written).
    """

    model_name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    sac_config: SACConfig | None = None
    class_names: tuple[str, ...] = ()
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    data: DataSpec | None = None
    preprocess: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    weights_sha256: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if isinstance(self.sac_config, dict):
            object.__setattr__(self, "sac_config", SACConfig.from_dict(self.sac_config))
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", DataSpec.from_dict(self.data))

    @property
    def is_sac(self) -> bool:
        """Whether the checkpoint is a SAC-ViT (it has an exit threshold)."""
        return self.sac_config is not None

    @property
    def threshold(self) -> float | None:
        """The stored default exit threshold η (``None`` for a plain ViT)."""
        return None if self.sac_config is None else self.sac_config.threshold

    def replace(self, **changes: Any) -> "CheckpointMeta":
        return dataclasses.replace(self, **changes)

    def to_header(self) -> dict[str, str]:
        """The safetensors header strings (without ``weights_sha256``, which the writer adds)."""
        header = {"format": FORMAT, "model_name": self.model_name, "model_kwargs": json.dumps(self.model_kwargs),
                  "sac_config": json.dumps(None if self.sac_config is None else self.sac_config.to_dict()),
                  "class_names": json.dumps(list(self.class_names)), "epoch": str(int(self.epoch)),
                  "metrics": json.dumps(self.metrics)}
        for key in ("preprocess", "calibration"):
            if getattr(self, key) is not None:
                header[key] = json.dumps(getattr(self, key))
        if self.data is not None:
            header["data"] = json.dumps(self.data.to_dict())
        return header

    @classmethod
    def from_header(cls, raw: dict[str, str], path: str | Path) -> "CheckpointMeta":
        """Decode and check a header; :class:`CheckpointError` naming ``path`` when it is not valid."""
        if raw.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a sacvit checkpoint (no '{FORMAT}' metadata; "
                                  f"for backbone weights such as DeiT use --init instead)")
        try:
            decoded = {key: json.loads(raw[key]) for key in _FIELDS}
            decoded.update({key: json.loads(raw[key]) if key in raw else None for key in _OPTIONAL})
            epoch = int(raw["epoch"])
            name = raw["model_name"]
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt sacvit checkpoint metadata ({_one_line(err)})") from err
        wrong = [key for key, kind in {**_FIELDS, **_OPTIONAL}.items() if not isinstance(decoded[key], kind)]
        if wrong or not all(isinstance(c, str) for c in decoded["class_names"]):
            raise CheckpointError(f"{path}: corrupt sacvit checkpoint metadata (bad {', '.join(wrong) or 'class_names'})")
        try:
            return cls(model_name=name, epoch=epoch, weights_sha256=raw.get("weights_sha256"), path=str(path),
                       **decoded)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt sacvit checkpoint metadata ({_one_line(err)})") from err


_FIELDS = {"model_kwargs": dict, "sac_config": (dict, type(None)), "class_names": list, "metrics": dict}
_OPTIONAL = {"preprocess": (dict, type(None)), "calibration": (dict, type(None)), "data": (dict, type(None))}


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


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (safetensors and pickle errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical tensors (NaNs included)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))




def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights (a DDP wrapper is unwrapped) and ``meta`` to ``path``, atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    header = meta.to_header()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    header["weights_sha256"] = weights_digest(weights)
    atomic_write(path, lambda tmp: save_file(weights, tmp, metadata=header))
    return path


def _raw_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # not safetensors, truncated header, …
        raise CheckpointError(f"{path} is not a sacvit checkpoint (cannot read a safetensors header: "
                              f"{_one_line(err)})") from err


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
    import timm
    from safetensors.torch import load_file

    from .. import model as _registers_sacvit_models  # noqa: F401  (timm must know the sacvit_* names)

    meta = read_metadata(path)
    name = meta.model_name
    if expected_model is not None and name != expected_model:
        raise ValueError(f"{path} is a checkpoint for model {name!r}, not {expected_model!r}")
    kwargs = dict(meta.model_kwargs)
    if meta.sac_config is not None:
        kwargs["sac"] = meta.sac_config
    try:
        weights = load_file(str(path))
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
        threshold: a new default exit threshold η (``sac_config.threshold``; SAC-ViT only).
        calibration: the record of how ``threshold`` was chosen.
        preprocess: the evaluation preprocessing.

    Returns:
        The new metadata.

    Raises:
        ValueError: not a sacvit checkpoint, a threshold for a plain ViT, or weights that changed.
    """
    from safetensors.torch import load_file, save_file

    path = Path(path)
    meta = read_metadata(path)
    if threshold is not None:
        if meta.sac_config is None:
            raise ValueError(f"{path} holds a plain ViT ({meta.model_name}): it has no exit threshold")
        meta = meta.replace(sac_config=dataclasses.replace(meta.sac_config, threshold=float(threshold)))
    if calibration is not None:
        meta = meta.replace(calibration=calibration)
    if preprocess is not None:
        meta = meta.replace(preprocess=preprocess)
    header = {**meta.to_header(), "weights_sha256": meta.weights_sha256} if meta.weights_sha256 else meta.to_header()
    weights = load_file(str(path))

    def write(tmp: str) -> None:
        save_file(weights, tmp, metadata=header)
        again = load_file(tmp)
        if again.keys() != weights.keys() or not all(_same_bits(again[k], v) for k, v in weights.items()):
            raise ValueError(f"{path}: the rewritten weights differ from the original; nothing was changed")

    atomic_write(path, write)
    return read_metadata(path)
