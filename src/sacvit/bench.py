"""``sacvit bench``: do SAC-ViT's FLOPs savings turn into wall-clock speed?

One run measures, on the same backbone weights and the same images:

* ``deit``     — the plain timm ViT at full resolution (the DeiT baseline every ratio refers to);
* ``deit-ee``  — the same plain ViT at the early-exit resolution (position embeddings resampled),
  timed *with* the downsampling of the full-resolution batch;
* ``sacvit``   — :meth:`SACViT.predict <sacvit.model.sacvit.SACViT.predict>` at several exit
  thresholds η, or at forced exit shares (the threshold is then the matching quantile of the EE
  confidences on the bench images — how to benchmark random weights, whose confidences are all
  alike);
* ``tome`` / ``evit`` — the training-free token-reduction peers of :mod:`sacvit.peers`.

For every row: throughput (img/s at ``--batch``), batch-1 latency (median and p90 over the bench
images one at a time, so an adaptive model's latency reflects its exit share), mean GMACs per
image (closed form; for SAC-ViT the mean of ``Prediction.gmacs``), the speedup over the baseline,
the FLOPs ratio (baseline GMACs / row GMACs) and the **realisation** = speedup ÷ FLOPs ratio
(1.0: every saved FLOP is saved time). With a labelled dataset, also top-1.

Timing method: everything under :func:`torch.inference_mode`; ``--warmup`` untimed calls per row
first (ToMe's benchmark helper throws out the first quarter of its runs the same way), then
``--repeats`` individually timed calls, whose median is reported (robust to the outliers a shared
machine produces); on CUDA, :func:`torch.cuda.synchronize` before and after each timed call.
``--interleave`` times the rows round-robin, so that a change of machine load hits every row alike.

:func:`profile_parts` (``--profile``) splits ``predict`` into its parts — EE stage, clustering,
reuse MLP, crop + re-embed + token assembly, SAC blocks, head/scatter — each bounded by a device
sync, next to the uninstrumented ``predict`` time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "COLUMNS",
    "PART_NAMES",
    "PartsProfile",
    "Row",
    "add_parser",
    "exit_threshold",
    "plain_gmacs",
    "plain_twin",
    "profile_parts",
    "run",
    "time_calls",
]

#: CSV columns, in order.
COLUMNS = (
    "method", "setting", "model", "batch", "img_s", "img_s_min", "img_s_max", "lat_ms", "lat_p90_ms",
    "gmacs", "speedup", "flops_ratio", "realisation", "lat_speedup", "exit_share", "threshold", "top1",
    "n_eval",
)

#: Parts of :func:`profile_parts`, in execution order.
PART_NAMES = ("ee", "cluster", "reuse", "tokens", "sac_blocks", "head")
PART_LABELS = {
    "ee": "EE stage (input check, downsample, blocks, GCA, head)",
    "cluster": "exit decision, batch compaction, clustering (window + token indices)",
    "reuse": "feature-reuse MLP on the EE tokens",
    "tokens": "crop + re-embed + token assembly",
    "sac_blocks": "SAC blocks (cluster attention)",
    "head": "head + scatter back (rest)",
}

DEFAULT_EXIT_SHARES = (0.9, 0.77, 0.5)
METHODS = ("deit", "deit-ee", "sacvit", "tome", "evit")


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1,
               device: torch.device | str = "cpu") -> list[float]:
    """Seconds of each of ``repeats`` timed calls of ``fn``, after ``warmup`` untimed ones.

    On CUDA the device is synchronised before and after every timed call.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


# --------------------------------------------------------------------------- models
def _ee_pixels(model: nn.Module) -> tuple[int, int]:
    p = model.patch_size
    return model.ee_grid[0] * p, model.ee_grid[1] * p


def downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The EE stage's downsampling: bilinear with antialiasing, as in ``SACViT.forward_ee``."""
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def plain_twin(model: nn.Module, img_size: int | tuple[int, int] | None = None,
               name: str | None = None, **kwargs: Any) -> nn.Module:
    """A plain timm ``VisionTransformer`` carrying ``model``'s backbone weights.

    The same weights are loaded (``reuse.*`` dropped) and the position embeddings resampled to
    ``img_size`` exactly as ``SACViT`` resamples them for its EE grid, so at the EE resolution its
    logits equal ``SACViT.forward_ee``'s (this is what ``load_backbone_weights`` does for a file).

    Args:
        model: a SAC-ViT or plain timm ViT.
        img_size: input side of the twin (default: ``model``'s).
        name: a timm model name to build (e.g. ``deit_small_patch16_224``); when it is not
            registered or its architecture does not match, a ``VisionTransformer`` with
            ``model``'s geometry is built instead.
        **kwargs: extra ``timm.create_model`` arguments for ``name`` (``depth``, …).
    """
    import timm
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    pe = model.patch_embed
    size = tuple(pe.img_size) if img_size is None else (
        (img_size, img_size) if isinstance(img_size, int) else tuple(img_size))
    blk = model.blocks[0]
    geometry = dict(
        img_size=size, patch_size=pe.patch_size, in_chans=pe.proj.in_channels, embed_dim=model.embed_dim,
        depth=len(model.blocks), num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim, qkv_bias=blk.attn.qkv.bias is not None,
        num_classes=model.num_classes,
    )
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("reuse.")}
    grid = (size[0] // pe.patch_size[0], size[1] // pe.patch_size[1])
    if grid != tuple(pe.grid_size):
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid),
                                                    old_size=list(pe.grid_size), num_prefix_tokens=1)
    candidates = []
    if name and timm.is_model(name):
        candidates.append(lambda: timm.create_model(name, **{**kwargs, "img_size": size,
                                                             "num_classes": model.num_classes}))
    candidates.append(lambda: VisionTransformer(**geometry))
    err: Exception | None = None
    for make in candidates:
        try:
            twin = make()
            twin.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as e:  # architecture mismatch: next candidate
            err = e
            continue
        param = next(model.parameters())
        return twin.to(device=param.device, dtype=param.dtype).eval()
    raise ValueError(f"cannot build a plain ViT twin of {type(model).__name__}: {err}")


def plain_gmacs(model: nn.Module) -> float:
    """Closed-form GMACs per image of a plain timm ViT at its input size."""
    from . import flops

    pe = model.patch_embed
    blk = model.blocks[0]
    return flops.vit_macs(tuple(pe.grid_size), pe.patch_size[0], model.embed_dim, len(model.blocks),
                          model.num_classes, blk.mlp.fc1.out_features / model.embed_dim,
                          pe.proj.in_channels) / flops.GIGA


def exit_threshold(confidence: Tensor, share: float) -> float:
    """The threshold η under which a fraction ``share`` of ``confidence`` exits (``conf ≥ η``).

    ``round(share · n)`` images exit: η is the midpoint between the k-th and (k+1)-th largest
    confidence, so a recomputation with rounding-level differences exits the same images.
    ``share = 0`` gives 2.0 (every image to SAC), ``share = 1`` gives 0.0 (every image exits).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"exit share must be in [0, 1], got {share}")
    c = confidence.detach().float().flatten().sort(descending=True).values.cpu()
    k = round(share * c.numel())
    if k <= 0:
        return 2.0
    if k >= c.numel():
        return 0.0
    return float((c[k - 1] + c[k]) / 2)


# --------------------------------------------------------------------------- rows
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


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _sac_fn(model: nn.Module, threshold: float) -> Callable[[Tensor], Any]:
    return lambda x: model.predict(x, threshold)


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None


# --------------------------------------------------------------------------- profile
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
        _sync(self.device)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.parts[name] += now - self.t
        self.t = now


#: The stage methods of ``SACViT.predict``, each ending the lap of the part it completes.
_LAPS = (("forward_ee", "ee"), ("cluster", "cluster"), ("reuse_tokens", "reuse"),
         ("sac_tokens", "tokens"), ("sac_blocks", "sac_blocks"), ("sac_head", "head"))


@contextlib.contextmanager
def _lapped(model: nn.Module, clock: _Clock) -> Iterator[None]:
    """Make each stage method of ``model`` end a lap of ``clock`` when it returns.

    Instance attributes shadow the class's methods, so the real ``predict`` runs unchanged and
    calls the timed versions; they are removed on exit.
    """
    def timed(method: Callable[..., Any], part: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            clock.lap(part)
            return out
        return run

    for name, part in _LAPS:
        setattr(model, name, timed(getattr(model, name), part))
    try:
        yield
    finally:
        for name, _ in _LAPS:
            delattr(model, name)


def _predict_instrumented(model: nn.Module, x: Tensor, threshold: float, clock: _Clock) -> Any:
    """``model.predict(x, threshold)`` itself, with a synchronised lap after each part."""
    clock.start()
    with _lapped(model, clock):
        prediction = model.predict(x, threshold)
    clock.lap("head")  # the scatter of the SAC results back into the batch
    return prediction


def profile_parts(model: nn.Module, x: Tensor, threshold: float, repeats: int = 5, warmup: int = 1,
                  amp: torch.dtype | None = None) -> PartsProfile:
    """Per-part time split of ``model.predict(x, threshold)``.

    Each repetition runs ``predict`` plain (the total) and with a device sync after each part
    (:func:`_lapped`), alternately, so both see the same machine load; the medians are reported.
    """
    device = x.device
    ctx = _amp_context(device, amp)
    parts_runs: list[dict[str, float]] = []
    totals: list[float] = []
    pred = None
    with torch.inference_mode(), ctx:
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            model.predict(x, threshold)
            _sync(device)
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
    with torch.inference_mode(), _amp_context(x.device, amp):
        model.predict(x, threshold)
        with profile(activities=activities) as prof:
            model.predict(x, threshold)
            _sync(x.device)
    key = "self_device_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit)


# --------------------------------------------------------------------------- environment
def _amp_context(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: versions, threads, device, machine load."""
    import timm

    env: dict[str, Any] = {
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "device": str(device), "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "loadavg_1m": _loadavg(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# --------------------------------------------------------------------------- building
def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    kw = {}
    for key in ("depth", "embed_dim", "num_heads", "num_classes"):
        v = getattr(args, key, None)
        if v is not None:
            kw[key] = v
    return kw


def _plain_name(sac_name: str) -> str:
    """The registered timm name of the plain ViT of a SAC-ViT variant, or ``"vit"`` if none."""
    import timm

    rest = sac_name.removeprefix("sacvit_")
    for candidate in (rest, f"deit_{rest}"):
        if timm.is_model(candidate):
            return candidate
    return "vit"


def _load_models(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module, str, str]:
    """The SAC-ViT, the plain full-resolution baseline, and their names."""
    import timm

    from .model.sacvit import SACViT

    if args.baseline_checkpoint and not args.checkpoint:
        raise ValueError("--baseline-checkpoint needs --checkpoint (the trained SAC-ViT to compare)")
    if args.checkpoint:
        from .engine.checkpoint import load_checkpoint  # only when checkpoints are used

        model, meta = load_checkpoint(args.checkpoint, map_location=device)
        name = meta.get("model_name", type(model).__name__)
        twin_kwargs = {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k not in ("sac", "checkpoint")}
        if not isinstance(model, SACViT):
            raise ValueError(f"{args.checkpoint} holds a {type(model).__name__} ({name}), not a SAC-ViT")
    else:
        import sacvit  # noqa: F401  (registers the sacvit_* variants)

        name = args.model
        twin_kwargs = _overrides(args)
        torch.manual_seed(args.seed)
        try:
            model = timm.create_model(name, **_overrides(args))
        except RuntimeError as err:  # timm: unknown model
            raise ValueError(f"--model {name}: {err}") from err
        if not isinstance(model, SACViT):
            raise ValueError(f"--model {name} is not a SAC-ViT variant (try sacvit_deit_small_patch16_224)")
    model = model.to(device).eval()
    if args.baseline_checkpoint:
        from .engine.checkpoint import load_checkpoint

        base, bmeta = load_checkpoint(args.baseline_checkpoint, map_location=device)
        base_name = bmeta.get("model_name", type(base).__name__)
        if tuple(base.patch_embed.img_size) != tuple(model.patch_embed.img_size):
            raise ValueError(f"{args.baseline_checkpoint}: input size {tuple(base.patch_embed.img_size)} "
                             f"differs from the SAC-ViT's {tuple(model.patch_embed.img_size)}")
        if isinstance(base, SACViT):
            base = plain_twin(base)
    else:
        base_name = _plain_name(name)
        base = plain_twin(model, name=base_name, **twin_kwargs)
    return model, base.to(device).eval(), name, base_name


def _images(args: argparse.Namespace, model: nn.Module, device: torch.device):
    """The bench batch and, with ``--data``, the labelled evaluation set."""
    size = tuple(model.patch_embed.img_size)
    dataset = None
    if args.data:
        from .data import build_dataset

        dataset = build_dataset(args.data, args.data_dir, split=args.split, img_size=size[0], length=args.limit)
        n_classes = len(getattr(dataset, "classes", [])) or None
        if n_classes is not None and n_classes != model.num_classes:
            raise ValueError(f"--data {args.data} has {n_classes} classes, the model {model.num_classes}")
        if len(dataset) == 0:
            raise ValueError(f"--data {args.data}: no images")
        xs = [dataset[i][0] for i in range(min(args.batch, len(dataset)))]
        x = torch.stack(xs)
        if x.shape[0] < args.batch:  # repeat the images to fill the bench batch
            x = x.repeat((args.batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:args.batch]
    else:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch, model.patch_embed.proj.in_channels, *size, generator=g)
    return x.to(device), dataset


def _build_rows(args: argparse.Namespace, model: nn.Module, base: nn.Module, name: str, base_name: str,
                x: Tensor, amp: torch.dtype | None) -> list[Row]:
    from .peers import build_peer

    methods = set(args.methods)
    ee_px = _ee_pixels(model)
    full_px = tuple(model.patch_embed.img_size)
    rows: list[Row] = []
    plain_full, plain_ee = base, plain_twin(base, ee_px)
    compile_ = (lambda m: torch.compile(m)) if args.compile else (lambda m: m)
    if args.compile:
        model.forward_ee = torch.compile(model.forward_ee)
        model.sac_blocks = torch.compile(model.sac_blocks, dynamic=True)
    f_full, f_ee = compile_(plain_full), compile_(plain_ee)
    rows.append(Row("deit", f"full {full_px[0]}px", base_name, f_full, gmacs=plain_gmacs(plain_full)))
    if "deit-ee" in methods:
        rows.append(Row("deit-ee", f"EE {ee_px[0]}px (+downsample)", base_name,
                        lambda t: f_ee(downsample(t, ee_px)), gmacs=plain_gmacs(plain_ee)))
    if "sacvit" in methods:
        settings: list[tuple[float, str]] = []
        if args.exit_share:
            with torch.inference_mode(), _amp_context(x.device, amp):
                conf = model.forward_ee(x, need_gca=False).logits.float().softmax(-1).amax(-1)
            for share in _float_list(args.exit_share, "--exit-share"):
                thr = exit_threshold(conf, share)
                settings.append((thr, f"exit {share:g} (η={thr:.4g})"))
        for thr in _float_list(args.thresholds or "", "--thresholds"):
            settings.append((thr, f"η={thr:g}"))
        for thr, label in settings:
            rows.append(Row("sacvit", label, name, _sac_fn(model, thr), threshold=thr))
    if "tome" in methods:
        for r in _int_list(args.tome_r, "--tome-r"):
            peer = build_peer("tome", plain_full, r=r)
            rows.append(Row("tome", f"r={r}", base_name, compile_(peer), gmacs=peer.gmacs()))
    if "evit" in methods:
        for keep in _float_list(args.evit_keep, "--evit-keep"):
            peer = build_peer("evit", plain_full, keep_rate=keep)
            rows.append(Row("evit", f"keep={keep:g}", base_name, compile_(peer), gmacs=peer.gmacs()))
    return rows


# --------------------------------------------------------------------------- measuring
def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


def _measure(rows: list[Row], x: Tensor, args: argparse.Namespace, amp: torch.dtype | None) -> None:
    """Throughput and latency of every row (sequentially, or round-robin with ``--interleave``)."""
    device = x.device
    warmup = args.warmup if args.warmup is not None else max(1, math.ceil(args.repeats / 3))
    n_lat = args.latency_repeats
    # compiled models specialise on shapes: warm latency up on every bench image (both exit paths)
    lat_warmup = (x.shape[0] if args.compile else min(warmup, 3)) if n_lat else 0
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

    with torch.inference_mode(), _amp_context(device, amp):
        if not args.interleave:
            for row in _progress(rows, len(rows), "bench"):
                row.times = time_calls(batch_call(row), args.repeats, warmup, device)
                calls = latency_calls(row)
                for _ in range(lat_warmup):
                    next(calls)()
                row.latencies = [time_calls(next(calls), 1, 0, device)[0] for _ in range(n_lat)]
        else:
            for row in rows:
                time_calls(batch_call(row), 0, warmup, device)
            for _ in _progress(range(args.repeats), args.repeats, "bench rounds"):
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
            if row.method == "sacvit":
                pred = row.fn(x)
                row.gmacs = float(pred.gmacs.double().mean())
                row.exit_share = float((pred.stage == 0).double().mean())


def _evaluate(rows: list[Row], dataset, args: argparse.Namespace, device: torch.device,
              amp: torch.dtype | None) -> None:
    """Top-1 of every row on ``dataset``."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=args.batch, shuffle=False, num_workers=0)
    correct = {id(r): 0 for r in rows}
    n = 0
    with torch.inference_mode(), _amp_context(device, amp):
        for images, labels in _progress(loader, len(loader), "top-1"):
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            n += labels.numel()
            for row in rows:
                correct[id(row)] += int((_logits(row.fn(images)).argmax(-1) == labels).sum())
    for row in rows:
        row.top1, row.n_eval = correct[id(row)] / max(n, 1), n


def _finish(rows: list[Row], batch: int) -> list[dict[str, Any]]:
    """Rows as plain dicts with every derived column (ratios against the first row)."""
    out = []
    for row in rows:
        med = statistics.median(row.times) if row.times else float("nan")
        d: dict[str, Any] = {
            "method": row.method, "setting": row.setting, "model": row.model, "batch": batch,
            "img_s": batch / med if med > 0 else float("nan"),
            "img_s_min": batch / max(row.times) if row.times else float("nan"),
            "img_s_max": batch / min(row.times) if row.times else float("nan"),
            "lat_ms": 1000 * statistics.median(row.latencies) if row.latencies else None,
            "lat_p90_ms": 1000 * _percentile(row.latencies, 90) if row.latencies else None,
            "gmacs": row.gmacs, "exit_share": row.exit_share, "threshold": row.threshold,
            "top1": row.top1, "n_eval": row.n_eval,
        }
        out.append(d)
    b = out[0]
    for d in out:
        d["speedup"] = d["img_s"] / b["img_s"]
        d["flops_ratio"] = b["gmacs"] / d["gmacs"] if d["gmacs"] else None
        d["realisation"] = d["speedup"] / d["flops_ratio"] if d["flops_ratio"] else None
        d["lat_speedup"] = (b["lat_ms"] / d["lat_ms"]) if d["lat_ms"] and b["lat_ms"] else None
    for d, row in zip(out, rows):
        d["times_ms"] = [1000 * t for t in row.times]
        d["latencies_ms"] = [1000 * t for t in row.latencies]
    return out


# --------------------------------------------------------------------------- output
_TABLE = (("method", "method", "{}"), ("setting", "setting", "{}"), ("img/s", "img_s", "{:.1f}"),
          ("lat ms", "lat_ms", "{:.2f}"), ("p90 ms", "lat_p90_ms", "{:.2f}"), ("GMACs", "gmacs", "{:.3f}"),
          ("speedup", "speedup", "{:.2f}x"), ("FLOPs ratio", "flops_ratio", "{:.2f}x"),
          ("realisation", "realisation", "{:.0%}"), ("exit", "exit_share", "{:.2f}"), ("top-1", "top1", "{:.2%}"))


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table of the result rows (columns without any value are left out)."""
    cols = [(h, k, f) for h, k, f in _TABLE if any(r.get(k) is not None for r in rows)]
    cells = [[h for h, _, _ in cols]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else f.format(r[k]) for _, k, f in cols])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = {"deit": "*", "deit-ee": "P", "sacvit": "o", "tome": "s", "evit": "^"}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method and r["gmacs"]]
        if not rs:
            continue
        rs.sort(key=lambda r: r["gmacs"])
        kw = dict(marker=markers.get(method, "o"), label=method, markersize=9 if method == "deit" else 6)
        ax1.plot([r["gmacs"] for r in rs], [r["img_s"] for r in rs], **kw)
        ax2.plot([r["flops_ratio"] for r in rs], [r["speedup"] for r in rs], linestyle="", **kw)
        for r in rs:
            ax1.annotate(r["setting"].split(" (")[0], (r["gmacs"], r["img_s"]), fontsize=7,
                         textcoords="offset points", xytext=(4, 3))
    ax1.set_xlabel("GMACs / image")
    ax1.set_ylabel(f"throughput, img/s (batch {rows[0]['batch']})")
    ax1.set_title("throughput vs compute")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    top = max([r["flops_ratio"] or 1 for r in rows] + [r["speedup"] for r in rows]) * 1.1
    ax2.plot([0, top], [0, top], color="gray", linewidth=1, label="realisation 100%")
    ax2.plot([0, top], [0, 0.85 * top], color="gray", linewidth=1, linestyle="--", label="85%")
    ax2.set_xlim(0, top)
    ax2.set_ylim(0, top)
    ax2.set_xlabel("FLOPs ratio (baseline GMACs / GMACs)")
    ax2.set_ylabel("measured speedup")
    ax2.set_title("realisation = speedup / FLOPs ratio")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict[str, Any]], out: Path, env: dict[str, Any], config: dict[str, Any],
                  profile: PartsProfile | None = None, title: str = "sacvit bench") -> dict[str, Path]:
    """``bench.csv``, ``bench.json`` and ``bench.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json", "png": out / "bench.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    doc = {"env": env, "config": config, "rows": rows, "profile": None if profile is None else profile.to_dict()}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str))
    _plot(rows, paths["png"], title)
    return paths


# --------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    """The ``sacvit bench`` command."""
    if args.batch < 1 or args.repeats < 1 or args.latency_repeats < 0 or (args.warmup is not None and args.warmup < 0):
        raise ValueError("--batch and --repeats must be ≥ 1, --warmup and --latency-repeats ≥ 0")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"--methods: unknown {sorted(unknown)}; valid: {', '.join(METHODS)}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if not args.exit_share and not args.thresholds:
        if args.checkpoint:
            args.thresholds = "0.6,0.76,0.9"
        else:
            args.exit_share = ",".join(f"{s:g}" for s in DEFAULT_EXIT_SHARES)

    model, base, name, base_name = _load_models(args, device)
    x, dataset = _images(args, model, device)
    rows = _build_rows(args, model, base, name, base_name, x, amp)
    env = environment(device)
    load = env["loadavg_1m"]
    busy = load is not None and load > (os.cpu_count() or 1) * 0.5
    print(f"sacvit bench: {name} on {device} ({env['cpu'] if device.type == 'cpu' else env.get('gpu')}), "
          f"torch {env['torch']}, threads {env['threads']} (torch.get_num_threads), batch {args.batch}, "
          f"amp {args.amp}, compile {args.compile}")
    print(f"  {len(rows)} rows; {args.repeats} timed + "
          f"{args.warmup if args.warmup is not None else max(1, math.ceil(args.repeats / 3))} warm-up runs each, "
          f"median; latency: batch 1, {args.latency_repeats} runs"
          + (f"; load average {load:.2f}" if load is not None else "")
          + (" — the machine is busy: timings are noisy (fewer --threads and --interleave help; "
             "batch-1 latency with several threads suffers most)" if busy else ""))
    _measure(rows, x, args, amp)
    if dataset is not None:
        _evaluate(rows, dataset, args, device, amp)
    results = _finish(rows, args.batch)
    env["loadavg_1m_end"] = _loadavg()
    print(format_table(results))

    profile = None
    if args.profile:
        sac_rows = [r for r in rows if r.method == "sacvit"]
        if not sac_rows:
            raise ValueError("--profile needs a sacvit row (--methods with sacvit)")
        pick = min(sac_rows, key=lambda r: abs((r.exit_share or 0) - 0.77))
        profile = profile_parts(model, x, pick.threshold, repeats=args.repeats, warmup=1, amp=amp)
        print()
        print(profile.table())
    config = {k: v for k, v in vars(args).items() if k != "func"}
    title = (f"{name} vs {base_name}, {device}, {env['threads']} threads, batch {args.batch}"
             + (f", amp {args.amp}" if amp else ""))
    paths = write_results(results, Path(args.out), env, config, profile, title)
    if profile is not None:
        (Path(args.out) / "profile.txt").write_text(
            profile.table() + "\n\n" + profile_ops(model, x, profile.threshold, amp) + "\n")
        paths["profile"] = Path(args.out) / "profile.txt"
    print("wrote " + "  ".join(str(p) for p in paths.values()))
    return 0


EXAMPLES = """\
examples:
  sacvit bench --out runs/bench
      DeiT-S geometry (224/112 px), random weights and images, batch 64 on CPU: DeiT at 224 and
      112 px, SAC-ViT at exit shares 0.9/0.77/0.5, ToMe r=4,8,13, EViT keep=0.9,0.7,0.5.
  sacvit bench --exit-share 0.77 --methods deit,sacvit --profile --repeats 20 --threads 8
      only the baseline and SAC-ViT at the paper's exit share, plus the per-part time split.
  sacvit bench --checkpoint runs/demo/sacvit/last.safetensors \\
      --baseline-checkpoint runs/demo/baseline/last.safetensors --data cluttered-fmnist \\
      --data-dir /usr/share/datasets/fashion-mnist --limit 2000 --thresholds 0.6,0.76,0.9
      trained models: timing on dataset images, plus top-1 on 2000 validation images.
  sacvit bench --device cuda --amp bf16 --compile --batch 256
      GPU run (synchronised timing), bf16 autocast, torch.compile'd models.
  sacvit bench --model sacvit_demo_patch8_112 --depth 2 --embed-dim 32 --batch 4 --repeats 2
      a seconds-long smoke test.

Outputs under --out: bench.csv, bench.json (environment, config, every raw timing), bench.png
(throughput vs GMACs; speedup vs FLOPs ratio) and, with --profile, profile.txt.
realisation = speedup / FLOPs ratio: the share of the FLOPs saving that became wall-clock speed.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit bench``."""
    p = subparsers.add_parser(
        "bench",
        help="wall-clock throughput/latency of SAC-ViT vs DeiT, ToMe and EViT on one backbone",
        description="Measure whether FLOPs savings become wall-clock speed: throughput (img/s at "
                    "--batch) and batch-1 latency of the plain ViT at full and EE resolution, "
                    "SAC-ViT at several exit thresholds/shares, ToMe and EViT — same weights, same "
                    "images — with GMACs, speedup, FLOPs ratio and realisation (speedup / FLOPs ratio).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model (default: random weights)")
    g.add_argument("--model", default="sacvit_deit_small_patch16_224",
                   help="registered SAC-ViT variant to build with random weights, e.g. "
                        "sacvit_deit_small_patch16_224 (default) or sacvit_demo_patch8_112")
    g.add_argument("--depth", type=int, help="override the number of blocks, e.g. --depth 2 for a quick run")
    g.add_argument("--embed-dim", type=int, help="override the token width, e.g. --embed-dim 32")
    g.add_argument("--num-heads", type=int, help="override the attention heads (must divide the width), e.g. 2")
    g.add_argument("--num-classes", type=int, help="override the classifier size, e.g. --num-classes 10")
    g.add_argument("--checkpoint", help="trained SAC-ViT checkpoint (.safetensors from sacvit train) "
                                        "instead of random weights, e.g. runs/demo/sacvit/last.safetensors")
    g.add_argument("--baseline-checkpoint",
                   help="trained plain-ViT checkpoint for the deit/ToMe/EViT rows (needs --checkpoint; "
                        "without it those rows use the SAC-ViT's own backbone weights), "
                        "e.g. runs/demo/baseline/last.safetensors")
    g = p.add_argument_group("data (default: random images)")
    g.add_argument("--data", choices=("cluttered-fmnist", "fmnist", "imagefolder"),
                   help="labelled dataset: timing uses its first --batch images and top-1 is reported, "
                        "e.g. --data cluttered-fmnist")
    g.add_argument("--data-dir", help="dataset folder, e.g. /usr/share/datasets/fashion-mnist")
    g.add_argument("--split", default="val", choices=("train", "val"), help="dataset split (default val), e.g. --split train")
    g.add_argument("--limit", type=int, default=1000,
                   help="evaluate top-1 on the first N images (default 1000), e.g. --limit 2000")
    g = p.add_argument_group("what to run")
    g.add_argument("--methods", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                   default=list(METHODS),
                   help="comma-separated subset of deit,deit-ee,sacvit,tome,evit (default all; the "
                        "deit baseline always runs), e.g. --methods deit,sacvit")
    g.add_argument("--thresholds", help="SAC-ViT exit thresholds η, e.g. --thresholds 0.6,0.76,0.9 "
                                        "(default with --checkpoint: 0.6,0.76,0.9)")
    g.add_argument("--exit-share",
                   help="force these shares of the bench images to exit at EE, e.g. --exit-share 0.77,0.5: "
                        "η is the matching quantile of the EE confidences (default without --checkpoint: "
                        "0.9,0.77,0.5)")
    g.add_argument("--tome-r", default="4,8,13", help="ToMe tokens merged per block, e.g. --tome-r 4,8,13")
    g.add_argument("--evit-keep", default="0.9,0.7,0.5",
                   help="EViT keep rates at its reduction blocks, e.g. --evit-keep 0.9,0.7,0.5")
    g = p.add_argument_group("timing")
    g.add_argument("--batch", type=int, default=64, help="throughput batch size (default 64), e.g. --batch 128")
    g.add_argument("--repeats", type=int, default=10,
                   help="timed batch runs per row; the median is reported (default 10), e.g. --repeats 30")
    g.add_argument("--warmup", type=int,
                   help="untimed runs per row before timing (default: a third of --repeats, at least 1, "
                        "i.e. ToMe's first-25%%-thrown-out), e.g. --warmup 3")
    g.add_argument("--latency-repeats", type=int, default=30,
                   help="batch-1 runs per row for latency median/p90, cycling over the bench images "
                        "(default 30; 0 skips latency), e.g. --latency-repeats 100")
    g.add_argument("--interleave", action="store_true",
                   help="time the rows round-robin instead of one after the other, so load changes on a "
                        "shared machine hit every row alike, e.g. --interleave")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads (torch.set_num_threads; default: torch's choice, printed), "
                        "e.g. --threads 8")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="device (default cpu; auto = cuda when available), e.g. --device cuda")
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast dtype (default none = float32), e.g. --amp bf16")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the plain models, the peers and SAC-ViT's EE stage and SAC blocks "
                        "(dynamic shapes for the compacted batch), e.g. --compile")
    g.add_argument("--profile", action="store_true",
                   help="also split SAC-ViT predict (the setting nearest exit share 0.77) at --batch into "
                        "EE / clustering / reuse / crop+re-embed / SAC blocks / head, and write a "
                        "torch.profiler op table to profile.txt, e.g. --profile")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default 0), e.g. --seed 1")
    g.add_argument("--out", default="runs/bench", help="output folder (default runs/bench), e.g. --out runs/bench")
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser holding only the ``bench`` command (``python -m sacvit.bench``)."""
    parser = argparse.ArgumentParser(prog="sacvit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m sacvit.bench [options]`` = ``sacvit bench [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(["bench", *argv])
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sacvit bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
