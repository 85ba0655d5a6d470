"""What benchmark numbers depend on: device, threads, versions, machine load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "loadavg"]


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
