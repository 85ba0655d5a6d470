"""Benchmark rows: what is timed (one :class:`Row` per method and setting), how, and the derived
columns (speedup, FLOPs ratio, realisation) of the results.

Timing method: everything under :func:`torch.inference_mode`; ``warmup`` untimed calls per row
first (ToMe's benchmark helper throws out the first quarter of its runs the same way), then
``repeats`` individually timed calls, whose median is reported (robust to the outliers a shared
machine produces). ``interleave`` times the rows round-robin, so that a change of machine load
hits every row alike. Batch-1 latency cycles over the bench images one at a time, so an adaptive
model's latency reflects its exit share.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..report import Column
from ..devices import amp_context
from ..engine.timing import percentile, time_calls

__all__ = ["COLUMNS", "TABLE", "Row", "measure", "score", "finish"]

#: CSV columns, in order.
COLUMNS = (
    "method", "setting", "runtime", "model", "batch", "img_s", "img_s_min", "img_s_max", "lat_ms", "lat_p90_ms",
    "lat_mean_ms", "gmacs", "speedup", "flops_ratio", "realisation", "lat_speedup", "exit_share", "threshold",
    "top1", "n_eval",
)

#: The table ``sacvit bench`` prints.
TABLE = (Column("method", "method"), Column("setting", "setting"), Column("runtime", "runtime"), Column("img/s", "img_s", "{:.1f}"),
         Column("lat ms", "lat_ms", "{:.2f}"), Column("p90 ms", "lat_p90_ms", "{:.2f}"),
         Column("mean ms", "lat_mean_ms", "{:.2f}"), Column("GMACs", "gmacs", "{:.3f}"),
         Column("speedup", "speedup", "{:.2f}x"), Column("FLOPs ratio", "flops_ratio", "{:.2f}x"),
         Column("realisation", "realisation", "{:.0%}"), Column("exit", "exit_share", "{:.2f}"),
         Column("top-1", "top1", "{:.2%}"))


@dataclass
class Row:
    """One benchmarked method/setting: ``fn(x)`` returns logits or a ``Prediction``."""

    method: str
    setting: str
    model: str
    fn: Callable[[Tensor], Any]
    gmacs: float | None = None
    threshold: float | None = None
    exit_share: float | None = None
    times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    top1: float | None = None
    n_eval: int | None = None
    runtime: str = "eager"


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


def measure(rows: list[Row], x: Tensor, *, repeats: int, warmup: int, latency_repeats: int,
            interleave: bool = False, amp: torch.dtype | None = None, compiled: bool = False) -> None:
    """Throughput and latency of every row (sequentially, or round-robin with ``interleave``),
    then the exit share and mean GMACs of the adaptive rows on the bench batch."""
    device = x.device
    n_lat = latency_repeats
    # compiled models specialise on shapes: warm latency up on every bench image (both exit paths)
    lat_warmup = (x.shape[0] if compiled else min(warmup, 3)) if n_lat else 0
    singles = [x[i:i + 1] for i in range(x.shape[0])]

    def batch_call(row: Row) -> Callable[[], Any]:
        return lambda: row.fn(x)

    def latency_calls(row: Row) -> Iterator[Callable[[], Any]]:
        # images spread evenly over the bench batch (then cycling), so that with fewer runs than
        # images an adaptive model's latencies still sample its exits and non-exits fairly
        n, k = len(singles), 0
        span = max(n_lat, 1)
        while True:
            img = singles[(k % span) * n // span if span < n else k % n]
            yield lambda: row.fn(img)
            k += 1

    with torch.inference_mode(), amp_context(device, amp):
        if not interleave:
            for row in _progress(rows, len(rows), "bench"):
                row.times = time_calls(batch_call(row), repeats, warmup, device)
                calls = latency_calls(row)
                for _ in range(lat_warmup):
                    next(calls)()
                row.latencies = [time_calls(next(calls), 1, 0, device)[0] for _ in range(n_lat)]
        else:
            for row in rows:
                time_calls(batch_call(row), 0, warmup, device)
            for _ in _progress(range(repeats), repeats, "bench rounds"):
                for row in rows:
                    row.times += time_calls(batch_call(row), 1, 0, device)
            gens = {id(row): latency_calls(row) for row in rows}
            for row in rows:
                for _ in range(lat_warmup):
                    next(gens[id(row)])()
            for _ in range(n_lat):
                for row in rows:
                    row.latencies += time_calls(next(gens[id(row)]), 1, 0, device)
        for row in rows:  # exit share and GMACs of the adaptive rows, on the bench batch
            if row.method in ("sacvit", "cfvit", "lfvit", "dvt"):  # the adaptive rows
                pred = row.fn(x)
                row.gmacs = float(pred.gmacs.double().mean())
                row.exit_share = float((pred.stage == 0).double().mean())


def score(rows: list[Row], dataset, batch: int, device: torch.device, amp: torch.dtype | None) -> None:
    """Top-1 of every row on a labelled ``dataset``."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0)
    correct = {id(r): 0 for r in rows}
    n = 0
    with torch.inference_mode(), amp_context(device, amp):
        for images, labels in _progress(loader, len(loader), "top-1"):
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            n += labels.numel()
            for row in rows:
                correct[id(row)] += int((_logits(row.fn(images)).argmax(-1) == labels).sum())
    for row in rows:
        row.top1, row.n_eval = correct[id(row)] / max(n, 1), n


def finish(rows: list[Row], batch: int) -> list[dict[str, Any]]:
    """Rows as plain dicts with every derived column (ratios against the first row of the same runtime)."""
    out = []
    for row in rows:
        med = statistics.median(row.times) if row.times else float("nan")
        d: dict[str, Any] = {
            "method": row.method, "setting": row.setting, "runtime": row.runtime, "model": row.model, "batch": batch,
            "img_s": batch / med if med > 0 else float("nan"),
            "img_s_min": batch / max(row.times) if row.times else float("nan"),
            "img_s_max": batch / min(row.times) if row.times else float("nan"),
            "lat_ms": 1000 * statistics.median(row.latencies) if row.latencies else None,
            "lat_p90_ms": 1000 * percentile(row.latencies, 90) if row.latencies else None,
            "lat_mean_ms": 1000 * statistics.fmean(row.latencies) if row.latencies else None,
            "gmacs": row.gmacs, "exit_share": row.exit_share, "threshold": row.threshold,
            "top1": row.top1, "n_eval": row.n_eval,
        }
        out.append(d)
    for d in out:
        b = next(r for r in out if r["runtime"] == d["runtime"])  # the DeiT row of the same runtime
        d["speedup"] = d["img_s"] / b["img_s"]
        d["flops_ratio"] = b["gmacs"] / d["gmacs"] if d["gmacs"] else None
        d["realisation"] = d["speedup"] / d["flops_ratio"] if d["flops_ratio"] else None
        d["lat_speedup"] = (b["lat_ms"] / d["lat_ms"]) if d["lat_ms"] and b["lat_ms"] else None
    for d, row in zip(out, rows):
        d["times_ms"] = [1000 * t for t in row.times]
        d["latencies_ms"] = [1000 * t for t in row.latencies]
    return out
