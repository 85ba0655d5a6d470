"""What benchmark numbers depend on: device, threads, versions, machine load, autocast."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["amp_context", "environment", "loadavg", "resolve_device"]


def amp_context(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``amp`` on ``device`` (a no-op for ``None``)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available; ``"cuda"`` without CUDA is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> float | None:
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, threads, device and machine load, for the benchmark's JSON."""
    import timm

    env: dict[str, Any] = {
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "device": str(device), "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "loadavg_1m": loadavg(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
