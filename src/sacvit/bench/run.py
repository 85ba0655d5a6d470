"""``sacvit bench``: do SAC-ViT's FLOPs savings turn into wall-clock speed?

One run measures, on the same backbone weights and the same images:

* ``deit``     — the plain timm ViT at full resolution (the DeiT baseline every ratio refers to);
* ``deit-ee``  — the same plain ViT at the early-exit resolution (position embeddings resampled),
  timed *with* the downsampling of the full-resolution batch;
* ``sacvit``   — :meth:`SACViT.predict <sacvit.model.sacvit.SACViT.predict>` at several exit
  thresholds η, or at forced exit shares (the threshold is then the matching quantile of the EE
  confidences on the bench images — how to benchmark random weights, whose confidences are all
  alike);
* ``cfvit`` / ``lfvit`` / ``dvt`` — SAC-ViT's predecessors (:mod:`sacvit.model.family`,
  :mod:`sacvit.model.dvt`) with the same real exit, at the same exit shares or thresholds: from
  their trained checkpoints (``member_checkpoints``), else built on the SAC-ViT's own weights;
* ``tome`` / ``evit`` — the training-free token-reduction peers of :mod:`sacvit.peers`.

Runtimes: ``torch`` (eager, or with ``compile`` every model through ``torch.compile`` — SAC-ViT's
two stages with ``fullgraph=True``, :class:`~sacvit.model.stages.CompiledSACViT`) and ``ort``:
DeiT exported plainly to ONNX and SAC-ViT's two graphs (:mod:`sacvit.deploy.export`) on
onnxruntime with the same thread count, exit decision on the host (:mod:`sacvit.runtime`). The
ratios of a row are against the DeiT row of its own runtime.

For every row: throughput (img/s at ``batch``), batch-1 latency (median, p90 and mean over the
bench images one at a time), mean GMACs per image (closed form; for SAC-ViT the mean of
``Prediction.gmacs``), the speedup over the baseline, the FLOPs ratio (baseline GMACs / row
GMACs) and the **realisation** = speedup ÷ FLOPs ratio (1.0: every saved FLOP is saved time).
With a labelled dataset, also top-1. See :mod:`.rows` for the timing method and :mod:`.profile`
for the per-part split of ``predict``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from .. import flops, plots
from ..data import build_dataset
from ..data.classes import IGNORE_HINT, check_class_names, describe_data
from ..devices import AMP_MODES, amp_context, amp_dtype, resolve_device
from ..io.checkpoint import load_checkpoint, read_metadata
from ..model.sacvit import SACViT
from ..model.stages import CompiledSACViT
from ..peers import build_peer
from ..report import format_table, write_csv, write_json
from .environment import environment, loadavg
from .profile import PartsProfile, profile_ops, profile_parts
from .rows import COLUMNS, TABLE, Row, finish, measure, score
from .twins import downsample, ee_pixels, exit_threshold, plain_name, plain_twin

__all__ = ["BenchConfig", "METHODS", "DEFAULT_METHODS", "RUNTIMES", "DEFAULT_EXIT_SHARES", "load_member", "run"]

DEFAULT_EXIT_SHARES = (0.9, 0.77, 0.5)
#: Every method a bench row can be; ``DEFAULT_METHODS`` run without ``--methods``.
METHODS = ("deit", "deit-ee", "sacvit", "cfvit", "lfvit", "dvt", "tome", "evit")
DEFAULT_METHODS = ("deit", "deit-ee", "sacvit", "tome", "evit")
#: The methods whose rows exit per image (their GMACs and exit share are read from ``predict``).
ADAPTIVE = ("sacvit", "cfvit", "lfvit", "dvt")
MEMBERS = ("cfvit", "lfvit", "dvt")
RUNTIMES = ("torch", "ort")


@dataclass
class BenchConfig:
    """Everything one ``sacvit bench`` run needs (each field is an option of the command)."""

    model: str = "sacvit_deit_small_patch16_224"
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    num_classes: int | None = None
    checkpoint: str | None = None
    baseline_checkpoint: str | None = None
    data: str | None = None
    data_dir: str | None = None
    split: str = "test"
    limit: int = 1000
    ignore_class_names: bool = False
    score: bool = True
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    member_checkpoints: dict[str, str] = field(default_factory=dict)
    member_thresholds: dict[str, list[float]] = field(default_factory=dict)
    thresholds: list[float] | None = None
    exit_shares: list[float] | None = None
    tome_r: list[int] = field(default_factory=lambda: [4, 8, 13])
    evit_keep: list[float] = field(default_factory=lambda: [0.9, 0.7, 0.5])
    batch: int = 64
    repeats: int = 10
    warmup: int | None = None
    latency_repeats: int = 30
    interleave: bool = False
    threads: int | None = None
    device: str = "cpu"
    amp: str = "none"
    compile: bool = False
    runtimes: list[str] = field(default_factory=lambda: ["torch"])
    profile: bool = False
    seed: int = 0
    out: str = "runs/bench"

    def check(self) -> None:
        """``ValueError`` for settings that cannot run."""
        if self.batch < 1 or self.repeats < 1 or self.latency_repeats < 0 or (self.warmup is not None and self.warmup < 0):
            raise ValueError("--batch and --repeats must be ≥ 1, --warmup and --latency-repeats ≥ 0")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"--methods: unknown {sorted(unknown)}; valid: {', '.join(METHODS)}")
        bad = set(self.runtimes) - set(RUNTIMES)
        if bad or not self.runtimes:
            raise ValueError(f"--runtime: unknown {sorted(bad)}; valid: {', '.join(RUNTIMES)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be ≥ 1")
        if self.amp not in AMP_MODES:
            raise ValueError(f"--amp must be none, bf16 or fp16, got {self.amp!r}")
        bad_members = set(self.member_checkpoints) - set(MEMBERS)
        if bad_members:
            raise ValueError(f"--member-checkpoint: unknown method {sorted(bad_members)}; valid: {', '.join(MEMBERS)}")
        if self.baseline_checkpoint and not self.checkpoint:
            raise ValueError("--baseline-checkpoint needs --checkpoint (the trained SAC-ViT to compare)")
        for share in self.exit_shares or ():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"exit share must be in [0, 1], got {share}")


def _overrides(cfg: BenchConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("depth", "embed_dim", "num_heads", "num_classes") if getattr(cfg, k) is not None}


def load_models(cfg: BenchConfig, device: torch.device) -> tuple[nn.Module, nn.Module, str, str]:
    """The SAC-ViT, the plain full-resolution baseline, and their names."""
    if cfg.checkpoint:

        model, meta = load_checkpoint(cfg.checkpoint, map_location=device)
        name = meta.model_name
        twin_kwargs = {k: v for k, v in meta.model_kwargs.items() if k not in ("sac", "checkpoint")}
        if not isinstance(model, SACViT):
            raise ValueError(f"{cfg.checkpoint} holds a {type(model).__name__} ({name}), not a SAC-ViT")
    else:
        name, twin_kwargs = cfg.model, _overrides(cfg)
        torch.manual_seed(cfg.seed)
        try:
            model = timm.create_model(name, **twin_kwargs)
        except RuntimeError as err:  # timm: unknown model
            raise ValueError(f"--model {name}: {err}") from err
        if not isinstance(model, SACViT):
            raise ValueError(f"--model {name} is not a SAC-ViT variant (try sacvit_deit_small_patch16_224)")
    model = model.to(device).eval()
    if cfg.baseline_checkpoint:

        base, bmeta = load_checkpoint(cfg.baseline_checkpoint, map_location=device)
        base_name = bmeta.model_name
        if tuple(base.patch_embed.img_size) != tuple(model.patch_embed.img_size):
            raise ValueError(f"{cfg.baseline_checkpoint}: input size {tuple(base.patch_embed.img_size)} "
                             f"differs from the SAC-ViT's {tuple(model.patch_embed.img_size)}")
        if isinstance(base, SACViT):
            base = plain_twin(base)
    else:
        base_name = plain_name(name)
        base = plain_twin(model, name=base_name, **twin_kwargs)
    return model, base.to(device).eval(), name, base_name


def bench_images(cfg: BenchConfig, model: nn.Module, device: torch.device):
    """The bench batch and, with ``cfg.data``, the labelled evaluation set."""
    size = tuple(model.patch_embed.img_size)
    dataset = None
    if cfg.data:

        dataset = build_dataset(cfg.data, cfg.data_dir, split=cfg.split, img_size=size[0], length=cfg.limit)
        if not cfg.ignore_class_names and getattr(dataset, "classes", None) is not None:

            described = describe_data(cfg.data, cfg.data_dir, cfg.split)
            for path in (cfg.checkpoint, cfg.baseline_checkpoint):
                if path:
                    check_class_names(read_metadata(path).class_names, dataset.classes, f"{path} vs {described}",
                                      IGNORE_HINT)
        n_classes = len(getattr(dataset, "classes", [])) or None
        if n_classes is not None and n_classes != model.num_classes:
            raise ValueError(f"--data {cfg.data} has {n_classes} classes, the model {model.num_classes}")
        x = torch.stack([dataset[i][0] for i in range(min(cfg.batch, len(dataset)))])
        if x.shape[0] < cfg.batch:  # repeat the images to fill the bench batch
            x = x.repeat((cfg.batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:cfg.batch]
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(cfg.batch, model.patch_embed.proj.in_channels, *size, generator=g)
    return x.to(device), dataset


def build_rows(cfg: BenchConfig, model: nn.Module, base: nn.Module, name: str, base_name: str,
               x: Tensor, amp: torch.dtype | None) -> list[Row]:
    """One :class:`Row` per method and setting, the baseline first."""
    methods = set(cfg.methods)
    ee_px = ee_pixels(model)
    full_px = tuple(model.patch_embed.img_size)
    rows: list[Row] = []
    plain_full, plain_ee = base, plain_twin(base, ee_px)
    compile_ = (lambda m: torch.compile(m)) if cfg.compile else (lambda m: m)
    sac_predict = CompiledSACViT(model).predict if cfg.compile else model.predict
    kind = "compiled" if cfg.compile else "eager"
    f_full, f_ee = compile_(plain_full), compile_(plain_ee)
    settings = _exit_settings(cfg, model, x, amp) if "sacvit" in methods else []
    if "torch" not in cfg.runtimes:
        return _ort_rows(cfg, model, plain_full, name, base_name, settings)
    rows.append(Row("deit", f"full {full_px[0]}px", base_name, f_full, gmacs=flops.vit_gmacs(plain_full), runtime=kind))
    if "deit-ee" in methods:
        rows.append(Row("deit-ee", f"EE {ee_px[0]}px (+downsample)", base_name,
                        lambda t: f_ee(downsample(t, ee_px)), gmacs=flops.vit_gmacs(plain_ee), runtime=kind))
    for thr, label in settings:
        rows.append(Row("sacvit", label, name, lambda t, thr=thr: sac_predict(t, thr), threshold=thr, runtime=kind))
    for method in (m for m in MEMBERS if m in methods):
        member, member_name = load_member(cfg, method, model, name, x.device)
        own = cfg.member_thresholds.get(method)
        for thr, label in ([(t, f"η={t:g}") for t in own] if own else _exit_settings(cfg, member, x, amp)):
            rows.append(Row(method, label, member_name, lambda t, f=member.predict, thr=thr: f(t, thr), threshold=thr,
                            runtime=kind))
    if "tome" in methods:
        for r in cfg.tome_r:
            peer = build_peer("tome", plain_full, r=r)
            rows.append(Row("tome", f"r={r}", base_name, compile_(peer), gmacs=peer.gmacs(), runtime=kind))
    if "evit" in methods:
        for keep in cfg.evit_keep:
            peer = build_peer("evit", plain_full, keep_rate=keep)
            rows.append(Row("evit", f"keep={keep:g}", base_name, compile_(peer), gmacs=peer.gmacs(), runtime=kind))
    if "ort" in cfg.runtimes:
        rows += _ort_rows(cfg, model, plain_full, name, base_name, settings)
    return rows


def _exit_settings(cfg: BenchConfig, model: nn.Module, x: Tensor, amp: torch.dtype | None) -> list[tuple[float, str]]:
    """``(η, label)`` of an adaptive model's rows: each forced exit share's η (the quantile of the
    model's own first-stage confidences on the bench batch), then the given thresholds."""
    settings: list[tuple[float, str]] = []
    if cfg.exit_shares:
        with torch.inference_mode(), amp_context(x.device, amp):
            conf = model.predict_stages(x)[0].confidence.float()
        for share in cfg.exit_shares:
            thr = exit_threshold(conf, share)
            settings.append((thr, f"exit {share:g} (η={thr:.4g})"))
    return settings + [(thr, f"η={thr:g}") for thr in cfg.thresholds or ()]


def load_member(cfg: BenchConfig, method: str, model: nn.Module, name: str,
                device: torch.device) -> tuple[nn.Module, str]:
    """A predecessor (``cfvit``, ``lfvit``, ``dvt``) and its name: its trained checkpoint when given,
    else the variant of ``name``'s geometry carrying the SAC-ViT's backbone weights (DVT: in every
    stage), so that without checkpoints every method runs the same weights.

    Raises:
        ValueError: the checkpoint holds another method, or no variant of this geometry is registered.
    """
    path = cfg.member_checkpoints.get(method)
    if path:
        member, meta = load_checkpoint(path, map_location=device)
        if not meta.model_name.startswith(f"{method}_"):
            raise ValueError(f"--member-checkpoint {method}={path} holds {meta.model_name}, not a {method} model")
        return member.eval(), meta.model_name
    member_name = re.sub(r"^[a-z]+_", f"{method}_", name, count=1)
    if not timm.is_model(member_name):
        raise ValueError(f"--methods {method}: no {member_name} is registered (see timm.list_models('{method}*')); "
                         f"bench a variant that has one, or give --member-checkpoint {method}=PATH")
    if cfg.checkpoint:
        twin_kwargs = {k: v for k, v in read_metadata(cfg.checkpoint).model_kwargs.items() if k not in ("sac", "checkpoint")}
    else:
        twin_kwargs = _overrides(cfg)
    member = timm.create_model(member_name, **twin_kwargs)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("reuse.")}
    if method == "dvt":
        member.load_backbone_state(backbone)
    else:
        member.load_state_dict(model.state_dict())
    return member.to(device).eval(), member_name


def _ort_rows(cfg: BenchConfig, model: nn.Module, plain: nn.Module, name: str, base_name: str,
              settings: list[tuple[float, str]]) -> list[Row]:
    """DeiT as one ONNX graph and SAC-ViT as its two, on onnxruntime (graphs under ``OUT/onnx``)."""
    from ..deploy.export import export_onnx, export_plain
    from ..runtime import OnnxClassifier, OnnxSACViT

    if next(model.parameters()).device.type != "cpu":
        raise ValueError("--runtime ort runs onnxruntime's CPU provider: use --device cpu")
    folder = Path(cfg.out) / "onnx"
    threads = torch.get_num_threads()
    deit = OnnxClassifier(export_plain(plain, folder / "deit.onnx"), threads=threads)
    sac = OnnxSACViT(export_onnx(model, folder / "sacvit").parent, threads=threads)
    rows = [Row("deit", f"full {plain.patch_embed.img_size[0]}px", base_name, deit, gmacs=flops.vit_gmacs(plain),
                runtime="ort")]
    for thr, label in settings:
        rows.append(Row("sacvit", label, name, lambda t, thr=thr: sac.predict(t, thr), threshold=thr, runtime="ort"))
    return rows


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark, print its table (and profile) and write its files under ``cfg.out``.

    Returns:
        ``{"rows": [...], "profile": PartsProfile | None, "paths": {...}}``.
    """
    cfg.check()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = amp_dtype(cfg.amp)
    if not cfg.exit_shares and not cfg.thresholds:
        if cfg.checkpoint:
            cfg.thresholds = [0.6, 0.76, 0.9]
        else:
            cfg.exit_shares = list(DEFAULT_EXIT_SHARES)

    model, base, name, base_name = load_models(cfg, device)
    x, dataset = bench_images(cfg, model, device)
    rows = build_rows(cfg, model, base, name, base_name, x, amp)
    env = environment(device)
    load = env["loadavg_1m"]
    busy = load is not None and load > (env["cpu_count"] or 1) * 0.5
    warmup = cfg.warmup if cfg.warmup is not None else max(1, math.ceil(cfg.repeats / 3))
    print(f"sacvit bench: {name} on {device} ({env['cpu'] if device.type == 'cpu' else env.get('gpu')}), "
          f"torch {env['torch']}, threads {env['threads']} (torch.get_num_threads), batch {cfg.batch}, "
          f"amp {cfg.amp}, compile {cfg.compile}, runtime {','.join(cfg.runtimes)}")
    print(f"  {len(rows)} rows; {cfg.repeats} timed + {warmup} warm-up runs each, median; latency: batch 1, "
          f"{cfg.latency_repeats} runs" + (f"; load average {load:.2f}" if load is not None else "")
          + (" — the machine is busy: timings are noisy (fewer --threads and --interleave help; "
             "batch-1 latency with several threads suffers most)" if busy else ""))
    measure(rows, x, repeats=cfg.repeats, warmup=warmup, latency_repeats=cfg.latency_repeats,
            interleave=cfg.interleave, amp=amp, compiled=cfg.compile)
    if dataset is not None and cfg.score:
        score(rows, dataset, cfg.batch, device, amp)
    results = finish(rows, cfg.batch)
    env["loadavg_1m_end"] = loadavg()
    print(format_table(results, TABLE, left=3))

    profile: PartsProfile | None = None
    if cfg.profile:
        sac_rows = [r for r in rows if r.method == "sacvit"]
        if not sac_rows:
            raise ValueError("--profile needs a sacvit row (--methods with sacvit)")
        pick = min(sac_rows, key=lambda r: abs((r.exit_share or 0) - 0.77))
        profile = profile_parts(model, x, pick.threshold, repeats=cfg.repeats, warmup=1, amp=amp)
        print()
        print(profile.table())
    out = Path(cfg.out)
    title = (f"{name} vs {base_name}, {device}, {env['threads']} threads, batch {cfg.batch}"
             + (f", amp {cfg.amp}" if amp else ""))
    paths = {"csv": write_csv(out / "bench.csv", results, COLUMNS),
             "json": write_json(out / "bench.json", {"env": env, "config": dataclasses.asdict(cfg), "rows": results,
                                                     "profile": None if profile is None else profile.to_dict()}),
             "png": plots.bench(results, out / "bench.png", title)}
    if profile is not None:
        paths["profile"] = out / "profile.txt"
        paths["profile"].write_text(profile.table() + "\n\n" + profile_ops(model, x, profile.threshold, amp) + "\n")
    print("wrote " + "  ".join(str(p) for p in paths.values()))
    return {"rows": results, "profile": profile, "paths": paths}
