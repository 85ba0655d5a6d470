"""The timing loop: synchronised wall-clock timing of calls, and the statistics of the times.

The one place where sacvit times anything (``sacvit bench`` and the img/s column of
``sacvit eval``): warm-up calls first, then individually timed calls, each bracketed by a device
synchronisation on CUDA, under :func:`torch.inference_mode`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch

__all__ = ["sync", "time_calls", "percentile", "throughput"]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1,
               device: torch.device | str = "cpu") -> list[float]:
    """Seconds of each of ``repeats`` timed calls of ``fn``, after ``warmup`` untimed ones.

    On CUDA the device is synchronised before and after every timed call.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def throughput(fn: Callable[[torch.Tensor], Any], batches: Sequence[torch.Tensor],
               device: torch.device | str = "cpu") -> float:
    """Images per second of ``fn(x)`` over ``batches[1:]``, after ``batches[0]`` as warm-up."""
    with torch.inference_mode():
        fn(batches[0])
        timed = list(batches[1:]) or list(batches)
        seconds = 0.0
        for x in timed:
            seconds += time_calls(lambda: fn(x), repeats=1, warmup=0, device=device)[0]
    return sum(len(x) for x in timed) / max(seconds, 1e-9)
