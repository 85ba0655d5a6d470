"""Where the time of ``SACViT.predict`` goes: a per-part split and a torch.profiler op table.

:func:`profile_parts` times the real ``predict``, with a device-synchronised lap as each part ends (``SACViT.profiling``, the model's profile hook),
next to the uninstrumented call.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..devices import amp_context
from ..engine.timing import sync
from ..model.sacvit import SACViT

__all__ = ["PART_NAMES", "PartsProfile", "profile_parts", "profile_ops"]

#: Parts of :func:`profile_parts`, in execution order (the model's profile hook names them).
PART_NAMES = SACViT.PROFILE_PARTS
PART_LABELS = {
    "ee": "EE stage (input check, downsample, blocks, GCA, head)",
    "cluster": "exit decision, batch compaction, clustering (window + token indices)",
    "reuse": "feature-reuse MLP on the EE tokens",
    "tokens": "crop + re-embed + token assembly",
    "sac_blocks": "SAC blocks (cluster attention)",
    "head": "head + scatter back (rest)",
}


@dataclass
class PartsProfile:
    """Per-part time split of ``SACViT.predict`` (medians, milliseconds)."""

    parts: dict[str, float]
    total_ms: float
    batch: int
    n_sac: int
    threshold: float
    repeats: int
    prediction: Any = None

    @property
    def sum_ms(self) -> float:
        return sum(self.parts.values())

    @property
    def sac_stage_ms(self) -> float:
        """Everything after the EE stage: clustering, reuse, tokens, SAC blocks, head."""
        return sum(v for k, v in self.parts.items() if k != "ee")

    @property
    def overhead(self) -> float:
        """(clustering + crop/re-embed/assembly) ÷ SAC-stage time."""
        sac = self.sac_stage_ms
        return (self.parts["cluster"] + self.parts["tokens"]) / sac if sac > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"parts_ms": dict(self.parts), "sum_ms": self.sum_ms, "total_ms": self.total_ms,
                "sac_stage_ms": self.sac_stage_ms, "overhead_of_sac_stage": self.overhead,
                "batch": self.batch, "n_sac": self.n_sac, "threshold": self.threshold,
                "repeats": self.repeats}

    def table(self) -> str:
        lines = [f"predict split at batch {self.batch}: {self.n_sac} images through SAC "
                 f"(η={self.threshold:.6g}), medians of {self.repeats} runs",
                 f"{'part':<12} {'ms':>9} {'% total':>8} {'% SAC':>7}  what"]
        sac = self.sac_stage_ms
        for k, v in self.parts.items():
            share = "" if k == "ee" or sac <= 0 else f"{100 * v / sac:6.1f}%"
            lines.append(f"{k:<12} {v:9.2f} {100 * v / self.total_ms:7.1f}% {share:>7}  {PART_LABELS[k]}")
        lines.append(f"{'sum':<12} {self.sum_ms:9.2f} {100 * self.sum_ms / self.total_ms:7.1f}%")
        lines.append(f"{'predict':<12} {self.total_ms:9.2f}  (uninstrumented, timed alone)")
        lines.append(f"clustering + crop/re-embed overhead: {100 * self.overhead:.2f}% of the SAC stage "
                     f"({sac:.2f} ms)")
        return "\n".join(lines)


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts = dict.fromkeys(PART_NAMES, 0.0)
        self.t = 0.0

    def start(self) -> None:
        sync(self.device)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.parts[name] += now - self.t
        self.t = now


def _predict_instrumented(model: nn.Module, x: Tensor, threshold: float, clock: _Clock) -> Any:
    """``model.predict(x, threshold)`` itself, with a synchronised lap as each part ends
    (the model's :meth:`~sacvit.model.sacvit.SACViT.profiling` hook)."""
    clock.start()
    with model.profiling(clock.lap):
        prediction = model.predict(x, threshold)
    clock.lap("head")  # the scatter of the SAC results back into the batch
    return prediction


def profile_parts(model: nn.Module, x: Tensor, threshold: float, repeats: int = 5, warmup: int = 1,
                  amp: torch.dtype | None = None) -> PartsProfile:
    """Per-part time split of ``model.predict(x, threshold)``.

    Each repetition runs ``predict`` plain (the total) and with a device sync after each part
    (:func:`_predict_instrumented`), alternately, so both see the same machine load; the medians are reported.
    """
    device = x.device
    ctx = amp_context(device, amp)
    parts_runs: list[dict[str, float]] = []
    totals: list[float] = []
    pred = None
    with torch.inference_mode(), ctx:
        for i in range(warmup + repeats):
            sync(device)
            t0 = time.perf_counter()
            model.predict(x, threshold)
            sync(device)
            total = time.perf_counter() - t0
            clock = _Clock(device)
            pred = _predict_instrumented(model, x, threshold, clock)
            if i >= warmup:
                totals.append(total)
                parts_runs.append(clock.parts)
    parts = {k: 1000 * statistics.median(r[k] for r in parts_runs) for k in PART_NAMES}
    return PartsProfile(parts=parts, total_ms=1000 * statistics.median(totals), batch=x.shape[0],
                        n_sac=int(pred.stage.sum()), threshold=threshold, repeats=repeats, prediction=pred)


def profile_ops(model: nn.Module, x: Tensor, threshold: float, amp: torch.dtype | None = None,
                row_limit: int = 30) -> str:
    """torch.profiler table (top ops by self time) of one ``predict`` call after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if x.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.inference_mode(), amp_context(x.device, amp):
        model.predict(x, threshold)
        with profile(activities=activities) as prof:
            model.predict(x, threshold)
            sync(x.device)
    key = "self_device_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit)
