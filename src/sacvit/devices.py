"""The one device resolver and the one autocast spelling of every sacvit command and function.

* :func:`resolve_device` — ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
* :data:`AMP_MODES` / :func:`amp_dtype` / :func:`amp_context` — autocast as ``"none"``, ``"bf16"``
  or ``"fp16"`` (``sacvit train --amp``, ``sacvit bench --amp``, ``TrainConfig.amp``, ``BenchConfig.amp``).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_MODES", "amp_context", "amp_dtype", "resolve_device"]

AMP_MODES = ("none", "bf16", "fp16")
_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto", index: int | None = None) -> torch.device:
    """The device named by ``name``.

    Args:
        name: ``"auto"`` / ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device.
        index: the CUDA device of a plain ``"cuda"`` (a torchrun process's ``LOCAL_RANK``).

    Raises:
        ValueError: an unknown name, or CUDA asked for on a machine without it.
    """
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if name == "cuda" and index is not None:
        return torch.device("cuda", index)
    return torch.device(name)


def amp_dtype(mode: str) -> torch.dtype | None:
    """The autocast dtype of ``mode`` (``"none"``: ``None``)."""
    if mode not in _AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    return _AMP_DTYPES[mode]


def amp_context(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``amp`` on ``device`` (a no-op for ``None``)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)
