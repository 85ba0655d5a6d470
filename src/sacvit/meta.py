"""The typed metadata of a sacvit checkpoint: what it says about itself, and its header encoding.

A record of the core layer (like :class:`~sacvit.config.SACConfig`): :mod:`sacvit.io.checkpoint`
writes and reads it with the weights, and the timm registrations (:mod:`sacvit.model.registry`)
read it to restore a checkpoint's SAC configuration. The header keys are written and read only here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from .config import SACConfig

__all__ = ["CheckpointError", "CheckpointMeta", "DataSpec", "FORMAT", "read_header"]

FORMAT = "sacvit-checkpoint/1"


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (safetensors and pickle errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


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
        """The stored default exit threshold η: the SAC config's, a cascade's (``model_kwargs["dvt"]``),
        ``None`` for a plain ViT."""
        if self.sac_config is not None:
            return self.sac_config.threshold
        cascade = self.model_kwargs.get("dvt")
        return float(cascade.get("threshold", 0.76)) if isinstance(cascade, dict) else None

    def with_threshold(self, threshold: float) -> "CheckpointMeta":
        """The same metadata with another default η (``ValueError`` for a plain ViT)."""
        if self.sac_config is not None:
            return self.replace(sac_config=dataclasses.replace(self.sac_config, threshold=float(threshold)))
        if isinstance(self.model_kwargs.get("dvt"), dict):
            kwargs = {**self.model_kwargs, "dvt": {**self.model_kwargs["dvt"], "threshold": float(threshold)}}
            return self.replace(model_kwargs=kwargs)
        raise ValueError(f"{self.model_name} is a plain ViT: it has no exit threshold")

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




def read_header(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of ``path``.

    Raises:
        CheckpointError: not a readable safetensors file (a ``.pth``, truncated, …), naming the path.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # not safetensors, truncated header, …
        raise CheckpointError(f"{path} is not a sacvit checkpoint (cannot read a safetensors header: "
                              f"{_one_line(err)})") from err
