"""Training loop for SAC-ViT and plain timm ViT baselines, single process or DDP under ``torchrun``.

One recipe for both kinds of model, so comparisons are fair: AdamW, per-step cosine schedule
with linear warm-up, label smoothing, optional Mixup/CutMix, drop-path, gradient clipping and
(on CUDA) bf16/fp16 autocast. SAC-ViT models are trained with
:func:`~sacvit.engine.loss.sac_loss` on ``model(x, full_window=progress < select_after)``;
plain models with cross-entropy.

Data parallelism: under ``torchrun`` with ``WORLD_SIZE > 1`` the process group uses NCCL on
GPUs and gloo on CPUs. A :class:`~torch.utils.data.DistributedSampler` is used in every mode,
so global batch ``k`` holds the same images whatever the number of processes; each process
takes ``batch_size / world_size`` of them. Only rank 0 writes files.

Outputs in ``out_dir``: ``config.json``, ``metrics.jsonl`` (one line per epoch),
``steps.jsonl`` (with ``log_every``), ``last.safetensors`` + ``last.state.pt`` after every epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..config import SACConfig
from .checkpoint import load_checkpoint, load_training_state, save_checkpoint
from .loss import cross_entropy, sac_loss

__all__ = ["TrainConfig", "train", "build_split", "synthetic_dataset", "add_parser", "DATA_CHOICES"]

DATA_CHOICES = ("cluttered-fmnist", "fmnist", "imagefolder", "synthetic")
CHECKPOINT = "last.safetensors"


@dataclass
class TrainConfig:
    """Everything one training run needs; each field is a ``sacvit train`` option.

    Attributes:
        model: timm model name; ``sacvit_*`` names are SAC-ViT, any other timm ViT is a baseline.
        model_kwargs: extra ``timm.create_model`` arguments (``embed_dim``, ``depth``, …).
        data: dataset name, one of :data:`DATA_CHOICES`.
        data_dir: dataset folder (Fashion-MNIST idx files, or an image folder with train/ val/).
        img_size: input side in pixels (default: the model's).
        train_length: use only this many training images.
        val_length: use only this many validation images.
        epochs: total number of epochs.
        batch_size: global batch size (over all processes).
        lr: peak learning rate (reached after warm-up).
        weight_decay: AdamW weight decay (none on biases, norms, position embeddings, CLS).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        min_lr: final learning rate of the cosine schedule.
        label_smoothing: label smoothing ε.
        mixup: Mixup α (0: off).
        cutmix: CutMix α (0: off).
        drop_path: stochastic depth rate.
        clip_grad: gradient-norm clipping (``None`` or 0: off).
        amp: bf16/fp16 autocast on CUDA (ignored on CPU).
        amp_dtype: ``"bfloat16"`` or ``"float16"`` (the latter with a gradient scaler).
        workers: DataLoader workers per process (default 0 on CPU, up to 8 on GPU).
        threads: CPU threads per process (default ``OMP_NUM_THREADS`` or all cores / local processes).
        seed: seed of the initialisation, the sampler and the synthetic/cluttered data.
        init: backbone checkpoint (DeiT/timm ``.pth``/``.safetensors``) to start from.
        out_dir: output folder.
        resume: continue the run in ``out_dir`` from ``last.safetensors``.
        sac: :class:`~sacvit.config.SACConfig` field overrides for SAC-ViT models.
        select_after: fraction of training with the whole image as SAC target (overrides ``sac``).
        eval_every: validate every N epochs (and after the last one); 0: only after the last.
        log_every: append the all-reduced loss to ``steps.jsonl`` every N steps (0: off).
        cache_dir: folder for pre-rendered Fashion-MNIST arrays (default ``<out_dir>/../cache``).
        cache: use the pre-render cache.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    model: str = "sacvit_demo_patch8_112"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "cluttered-fmnist"
    data_dir: str | None = None
    img_size: int | None = None
    train_length: int | None = None
    val_length: int | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path: float = 0.1
    clip_grad: float | None = 1.0
    amp: bool = True
    amp_dtype: str = "bfloat16"
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    init: str | None = None
    out_dir: str = "runs/train"
    resume: bool = False
    sac: dict[str, Any] = field(default_factory=dict)
    select_after: float | None = None
    eval_every: int = 1
    log_every: int = 0
    cache_dir: str | None = None
    cache: bool = True
    device: str = "auto"


# ---------------------------------------------------------------------------------------- data
def synthetic_dataset(length: int, img_size: int, seed: int = 0, num_classes: int = 4) -> Dataset:
    """A tiny, quickly learnable dataset for smoke tests: a square whose brightness is its class.

    Each image is dark noise with one square (a quarter of the side) at a random place; class
    ``c`` of ``C`` has brightness ``80 + 160·c/(C−1)``.

    Args:
        length: number of images.
        img_size: image side in pixels (≥ 8).
        seed: generator seed; images are a pure function of ``(length, img_size, seed)``.
        num_classes: 2 to 8.
    """
    from ..data import TensorImageDataset

    if not 2 <= num_classes <= 8 or img_size < 8:
        raise ValueError(f"synthetic data needs 2–8 classes and ≥ 8 px, got {num_classes}, {img_size}")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (length, img_size, img_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (length,), generator=g)
    side = max(2, img_size // 4)
    corners = torch.randint(0, img_size - side + 1, (length, 2), generator=g)
    for i in range(length):
        (y0, x0), c = corners[i].tolist(), int(labels[i])
        images[i, y0:y0 + side, x0:x0 + side] = 80 + 160 * c // (num_classes - 1)
    return TensorImageDataset(images, labels, classes=[f"level-{c}" for c in range(num_classes)])


def _materialized(ds: Any, key: str, cache_dir: Path | None, main: bool, world: int) -> Dataset:
    """Pre-render a generated dataset into memory, through an ``.npz`` cache when given."""
    from ..data import TensorImageDataset, materialize

    cache = None if cache_dir is None else cache_dir / f"{key}.npz"
    loaded = None
    if cache is not None and main and not cache.is_file():
        images, labels = materialize(ds)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images.numpy(), labels=labels.numpy())
        os.replace(tmp, cache)
        loaded = images, labels
    if cache is not None and world > 1:
        dist.barrier()  # the other ranks wait for rank 0's file
    if loaded is None:
        if cache is not None:
            with np.load(cache) as f:
                loaded = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
        else:
            loaded = materialize(ds)
    return TensorImageDataset(*loaded, normalize=ds.normalize, classes=ds.classes)


def build_split(
    name: str,
    root: str | None,
    split: str,
    img_size: int,
    length: int | None = None,
    seed: int = 0,
    *,
    is_training: bool = False,
    cache_dir: Path | None = None,
    materialize: bool = False,
    main: bool = True,
    world: int = 1,
) -> Dataset:
    """One split of a dataset of :data:`DATA_CHOICES`, with a ``classes`` attribute.

    Args:
        name: dataset name.
        root: data folder (``None``: the package default for Fashion-MNIST).
        split: ``"train"`` or ``"val"``.
        img_size: image side in pixels.
        length: keep only this many images.
        seed: layout seed (cluttered, synthetic) or subset seed (imagefolder).
        is_training: training augmentation (image folders only).
        cache_dir: cache folder for pre-rendered Fashion-MNIST arrays (``None``: no cache).
        materialize: pre-render Fashion-MNIST-based data into memory.
        main: this process renders the cache file; with ``world > 1`` the others wait for it.
        world: number of processes (a barrier is used when > 1 and caching).

    Raises:
        ValueError: unknown name or unusable data; DatasetNotFoundError: missing data.
    """
    from ..data import build_dataset

    if name == "synthetic":
        n = length if length is not None else (256 if split == "train" else 64)
        return synthetic_dataset(n, img_size, seed=seed + (split != "train"))
    if name not in DATA_CHOICES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATA_CHOICES)}")
    ds = build_dataset(name, root, split, img_size=img_size, is_training=is_training, length=length, seed=seed)
    if len(ds) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} at {root} has no images")
    if materialize and hasattr(ds, "raw"):
        tag = hashlib.sha1(str(Path(root).resolve() if root else "default").encode()).hexdigest()[:8]
        layout = f"canvas{getattr(ds, 'canvas', img_size)}_v{getattr(ds, 'VERSION', 0)}"
        key = f"{name}_{split}_{img_size}px_{layout}_seed{seed}_n{len(ds)}_{tag}"
        return _materialized(ds, key, cache_dir, main, world)
    return ds


# ---------------------------------------------------------------------------------------- process setup
@dataclass
class _Dist:
    rank: int
    world: int
    local_world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(cfg: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif not cuda and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, local_world)))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return _Dist(rank, world, local_world, device)


def _all_mean(value: Tensor, d: _Dist) -> float:
    value = value.detach().double().clone()
    if d.world > 1:
        dist.all_reduce(value)
        value /= d.world
    return float(value)


def _rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- model, optimiser
def _default_img_size(cfg: TrainConfig) -> int:
    import timm

    if cfg.img_size:
        return int(cfg.img_size)
    if "img_size" in cfg.model_kwargs:
        size = cfg.model_kwargs["img_size"]
        return int(size if isinstance(size, int) else size[0])
    pretrained = timm.models.get_pretrained_cfg(cfg.model)
    return int(pretrained.input_size[-1]) if pretrained is not None else 224


def _build_model(cfg: TrainConfig, num_classes: int, img_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """Create the model from the config; returns it and its ``timm.create_model`` kwargs (no ``sac``)."""
    import timm

    if not timm.models.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}; see timm.list_models('*vit*') or the sacvit_* variants")
    is_sac = cfg.model.startswith("sacvit_")
    kwargs = {**cfg.model_kwargs, "img_size": img_size, "num_classes": num_classes, "drop_path_rate": cfg.drop_path}
    sac = dict(cfg.sac)
    if cfg.select_after is not None:
        sac["select_after"] = cfg.select_after
    if sac and not is_sac:
        raise ValueError(f"--sac / --select-after apply to sacvit_* models, not {cfg.model!r}")
    extra = {"sac": SACConfig.from_dict(sac)} if is_sac else {}
    try:
        model = timm.create_model(cfg.model, **kwargs, **extra)
    except TypeError as err:
        raise ValueError(f"cannot create {cfg.model!r} with {kwargs}: {err}") from err
    if cfg.init:
        from ..model import load_backbone_weights

        load_backbone_weights(model, cfg.init)
    return model, kwargs


def _schedule(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return (cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / cfg.lr

    return factor, total


def _check_resumed_sac(sac_cfg: SACConfig, cfg: TrainConfig, ckpt: Path) -> None:
    """On resume the checkpoint defines the model: ``--sac`` may only repeat its values.

    ``--select-after`` only affects training, so a new value is applied.
    """
    wanted = SACConfig.from_dict({**sac_cfg.to_dict(), **cfg.sac})
    if dataclasses.replace(wanted, select_after=sac_cfg.select_after) != sac_cfg:
        changed = {k: v for k, v in cfg.sac.items() if getattr(sac_cfg, k) != getattr(wanted, k)}
        raise ValueError(f"{ckpt} was trained with a different SAC configuration than --sac {changed}")
    sac_cfg.select_after = cfg.select_after if cfg.select_after is not None else wanted.select_after


# ---------------------------------------------------------------------------------------- validation
@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, d: _Dist, amp: dict[str, Any]) -> dict[str, float]:
    """Top-1 (%) on this rank's shard, all-reduced: EE and SAC for SAC-ViT, else plain."""
    from ..model import SACViT

    model.eval()
    is_sac = isinstance(model, SACViT)
    counts = torch.zeros(3, dtype=torch.float64, device=d.device)  # n, correct ee/plain, correct sac
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(**amp):
            if is_sac:
                ee, sac = (p.logits for p in model.predict_stages(x))
            else:
                ee, sac = model(x), None
        counts[0] += len(y)
        counts[1] += (ee.argmax(-1) == y).sum()
        if sac is not None:
            counts[2] += (sac.argmax(-1) == y).sum()
    if d.world > 1:
        dist.all_reduce(counts)
    n = max(1.0, float(counts[0]))
    model.train()
    if is_sac:
        return {"val_top1_ee": 100 * float(counts[1]) / n, "val_top1_sac": 100 * float(counts[2]) / n}
    return {"val_top1": 100 * float(counts[1]) / n}


# ---------------------------------------------------------------------------------------- training
def _append_json(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _reconcile_logs(out: Path, meta: dict[str, Any]) -> None:
    """Make the logs end at the checkpoint being resumed: drop later lines, restore a missing one.

    A run can stop between writing the checkpoint and appending its metrics line (or after
    logging steps past the checkpoint); the checkpoint's metadata holds that epoch's record.
    """
    record, epoch = meta["metrics"], meta["epoch"]
    for name, key, limit in (("metrics.jsonl", "epoch", epoch), ("steps.jsonl", "step", record.get("steps"))):
        path = out / name
        if not path.is_file() or limit is None:
            continue
        kept = [r for r in map(json.loads, path.read_text().splitlines()) if r[key] <= limit]
        if name == "metrics.jsonl" and record and (not kept or kept[-1]["epoch"] < epoch):
            kept.append(record)
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def train(cfg: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None) -> Path:
    """Train (or resume) a model and return the path of its final checkpoint.

    Args:
        cfg: the run's configuration.
        train_set: a dataset with ``classes`` to use instead of ``cfg.data`` (library use).
        val_set: its validation set (required with ``train_set``).

    Returns:
        ``out_dir/last.safetensors``.

    Raises:
        ValueError: bad configuration, unusable data or checkpoint (the message names the cause).
        DatasetNotFoundError: the dataset is missing.
    """
    from tqdm.auto import tqdm

    from ..model import SACViT

    d = _setup(cfg)
    try:
        out = Path(cfg.out_dir)
        ckpt = out / CHECKPOINT
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise ValueError(f"--epochs and --batch-size must be ≥ 1 and --lr > 0, "
                             f"got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
        if cfg.batch_size % d.world:
            raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {d.world} processes")
        if (cfg.mixup > 0 or cfg.cutmix > 0) and (cfg.batch_size // d.world) % 2:
            raise ValueError(f"Mixup/CutMix need an even batch per process, got {cfg.batch_size // d.world}")
        if cfg.resume and not ckpt.is_file():
            raise ValueError(f"nothing to resume: {ckpt} does not exist")
        if not cfg.resume and (ckpt.is_file() or (out / "metrics.jsonl").is_file()):
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or pick another --out-dir")
        img_size = _default_img_size(cfg)
        if train_set is None:
            cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else out.resolve().parent / "cache") if cfg.cache else None
            common = dict(cache_dir=cache_dir, materialize=True, main=d.main, world=d.world)
            train_set = build_split(cfg.data, cfg.data_dir, "train", img_size, cfg.train_length, cfg.seed,
                                    is_training=True, **common)
            val_set = build_split(cfg.data, cfg.data_dir, "val", img_size, cfg.val_length, cfg.seed, **common)
        elif val_set is None:
            raise ValueError("train(cfg, train_set) also needs val_set")
        classes = list(train_set.classes)
        per_rank = cfg.batch_size // d.world
        steps_per_epoch = math.ceil(len(train_set) / d.world) // per_rank  # DistributedSampler pads, drop_last
        if steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_set)} images) is smaller than one batch ({cfg.batch_size})")

        _seed(cfg.seed + d.rank)  # rank 0 = the single-process initialisation; DDP broadcasts it
        if cfg.resume:
            model, meta = load_checkpoint(ckpt, expected_model=cfg.model)
            if meta["class_names"] != classes:
                raise ValueError(f"{ckpt} was trained on classes {meta['class_names'][:5]}…, "
                                 f"the data has {classes[:5]}…")
            model_kwargs, state, start_epoch = meta["model_kwargs"], load_training_state(ckpt), meta["epoch"]
            if d.main:
                _reconcile_logs(out, meta)
        else:
            model, model_kwargs = _build_model(cfg, len(classes), img_size)
            state, start_epoch = None, 0
            if d.main:
                out.mkdir(parents=True, exist_ok=True)
                (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        model.to(d.device).train()
        is_sac = isinstance(model, SACViT)
        sac_cfg = model.sac_cfg if is_sac else None
        if cfg.resume and is_sac:
            _check_resumed_sac(sac_cfg, cfg, ckpt)

        import timm.optim
        from timm.data import Mixup

        optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
        factor, total_steps = _schedule(cfg, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.amp_dtype]
        use_amp = cfg.amp and d.device.type == "cuda"
        amp = dict(device_type=d.device.type, dtype=amp_dtype, enabled=use_amp)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if state.get("world_size") == d.world:
                _set_rng_state(state["rng"][d.rank])
            else:
                _seed(cfg.seed + d.rank + 1000 * start_epoch)
        mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                          label_smoothing=cfg.label_smoothing, num_classes=len(classes))
        net = model
        if d.world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

        workers = cfg.workers if cfg.workers is not None else (0 if d.device.type == "cpu" else min(8, os.cpu_count() or 1))
        loader_args = dict(num_workers=workers, pin_memory=d.device.type == "cuda", persistent_workers=workers > 0)
        sampler = DistributedSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
        train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=True, **loader_args)
        val_loader = DataLoader(Subset(val_set, range(d.rank, len(val_set), d.world)), batch_size=per_rank, **loader_args)

        step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not (d.main and sys.stderr.isatty()))
            for i, (x, y) in enumerate(bar):
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                if mixup is not None:
                    x, target = mixup(x, y)
                elif cfg.label_smoothing > 0:
                    target = F.one_hot(y, len(classes)).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / len(classes)
                else:
                    target = y
                with torch.autocast(**amp):
                    if is_sac:
                        logits_ee, logits_sac = net(x, full_window=step / total_steps < sac_cfg.select_after)
                        loss = sac_loss(logits_ee.float(), logits_sac.float(), target, sac_cfg)
                    else:
                        loss = cross_entropy(net(x).float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                loss_sum += loss.detach()
                if cfg.log_every and step % cfg.log_every == 0:
                    value = _all_mean(loss, d)
                    if d.main:
                        _append_json(out / "steps.jsonl", {"step": step, "epoch": epoch + 1, "loss": value,
                                                           "lr": scheduler.get_last_lr()[0]})
                if i % 10 == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.close()
            train_loss = _all_mean(loss_sum, d) / steps_per_epoch
            if not math.isfinite(train_loss):
                raise ValueError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower --lr")
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                      "lr": scheduler.get_last_lr()[0], "steps": step}
            last = epoch + 1 == cfg.epochs
            if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                record.update(_validate(model, val_loader, d, amp))
            record["seconds"] = time.perf_counter() - t0
            rng = [_rng_state()] * d.world
            if d.world > 1:
                dist.all_gather_object(rng, _rng_state())
            if d.main:
                extra = {"rng": rng, "world_size": d.world, "step": step,
                         "scaler": scaler.state_dict() if scaler.is_enabled() else None}
                save_checkpoint(ckpt, model, model_name=cfg.model, model_kwargs=model_kwargs, sac_cfg=sac_cfg,
                                class_names=classes, optimizer=optimizer, scheduler=scheduler, epoch=epoch + 1,
                                extra_metrics=record, extra_state=extra)
                _append_json(out / "metrics.jsonl", record)
                print(_summary(record, cfg.epochs), flush=True)
        if d.world > 1:
            dist.barrier()
        return ckpt
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _summary(r: dict[str, Any], epochs: int) -> str:
    vals = " ".join(f"{k.removeprefix('val_')} {v:.2f}%" for k, v in r.items() if k.startswith("val_"))
    return f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  lr {r['lr']:.2e}  {vals}  ({r['seconds']:.1f} s)"


# ---------------------------------------------------------------------------------------- CLI
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the example block's line breaks; append ``(default: X)`` unless the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, True, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"window\": 5}'")
    return value


_EXAMPLES = """\
examples:
  # CPU demo: SAC-ViT on Cluttered Fashion-MNIST, then the same-size plain ViT baseline
  sacvit train --model sacvit_demo_patch8_112 --epochs 30 --out-dir runs/sacvit_demo
  sacvit train --model deit_demo_patch8_112 --epochs 30 --out-dir runs/deit_demo

  # ImageNet on 8 GPUs from DeiT-S weights (paper setting: selection after 2/3 of training)
  torchrun --nproc_per_node=8 -m sacvit.cli train --model sacvit_deit_small_patch16_224 \\
      --data imagefolder --data-dir /data/imagenet --init deit_small_patch16_224.pth \\
      --epochs 30 --batch-size 1024 --lr 1e-4 --warmup-epochs 1 --mixup 0.8 --cutmix 1.0 \\
      --select-after 0.67 --out-dir runs/sacvit_s

  # continue an interrupted run exactly where its last checkpoint left it
  sacvit train --model sacvit_demo_patch8_112 --epochs 30 --out-dir runs/sacvit_demo --resume

Writes OUT_DIR/metrics.jsonl (one JSON line per epoch) and OUT_DIR/last.safetensors
(+ last.state.pt) after every epoch. Under torchrun, OMP_NUM_THREADS defaults to 1:
pass --threads for multi-process CPU runs.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sacvit train``."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a SAC-ViT (or a plain timm ViT baseline), single process or torchrun DDP",
        description="Train a SAC-ViT or a plain timm ViT with the same recipe (AdamW, cosine "
                    "schedule with warm-up, label smoothing, optional Mixup/CutMix).",
        epilog=_EXAMPLES, formatter_class=_HelpFormatter)
    a = p.add_argument
    a("--model", default=d.model, help="timm model name: sacvit_* is a SAC-ViT, any other ViT a baseline")
    a("--model-kwargs", type=_json_dict, default={}, help='extra timm.create_model arguments as JSON, e.g. \'{"depth": 8}\'')
    a("--data", choices=DATA_CHOICES, default=d.data,
      help="dataset: cluttered-fmnist (CPU demo), fmnist, imagefolder (DATA_DIR/train, DATA_DIR/val), "
           "synthetic (tiny smoke-test data)")
    a("--data-dir", default=d.data_dir, help="dataset folder (default for Fashion-MNIST: the system copy)")
    a("--img-size", type=int, default=d.img_size, help="input side in pixels (default: the model's)")
    a("--train-length", type=int, default=d.train_length, help="use only this many training images (default: all)")
    a("--val-length", type=int, default=d.val_length, help="use only this many validation images (default: all)")
    a("--epochs", type=int, default=d.epochs, help="total epochs")
    a("--batch-size", type=int, default=d.batch_size, help="global batch size over all processes")
    a("--lr", type=float, default=d.lr, help="peak learning rate (after warm-up)")
    a("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    a("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up epochs")
    a("--min-lr", type=float, default=d.min_lr, help="final learning rate of the cosine schedule")
    a("--label-smoothing", type=float, default=d.label_smoothing, help="label smoothing")
    a("--mixup", type=float, default=d.mixup, help="Mixup alpha (0: off)")
    a("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0: off)")
    a("--drop-path", type=float, default=d.drop_path, help="stochastic depth rate")
    a("--clip-grad", type=float, default=d.clip_grad, help="gradient-norm clipping (0: off)")
    a("--amp", action=argparse.BooleanOptionalAction, default=d.amp, help="autocast on CUDA, ignored on CPU (default: on)")
    a("--amp-dtype", choices=("bfloat16", "float16"), default=d.amp_dtype, help="autocast dtype")
    a("--workers", type=int, default=d.workers, help="DataLoader workers per process (default: 0 on CPU, ≤8 on GPU)")
    a("--threads", type=int, default=d.threads, help="CPU threads per process (default: all cores / processes)")
    a("--seed", type=int, default=d.seed, help="seed of initialisation, sampler and generated data")
    a("--init", default=d.init, help="DeiT/timm checkpoint (.pth/.safetensors) to initialise the backbone")
    a("--out-dir", default=d.out_dir, help="output folder")
    a("--resume", action="store_true", help="continue the run in --out-dir from last.safetensors (optimizer, "
      "schedule, sampler and RNG states included)")
    a("--sac", type=_json_dict, default={}, help="SACConfig overrides as JSON, e.g. '{\"window\": 5, \"alpha\": 0.88}'")
    a("--select-after", type=float, default=d.select_after,
      help="fraction of training with the whole image as SAC target (default: the SACConfig's)")
    a("--eval-every", type=int, default=d.eval_every, help="validate every N epochs (0: only at the end)")
    a("--log-every", type=int, default=d.log_every, help="log the loss to steps.jsonl every N steps (0: off)")
    a("--cache-dir", default=d.cache_dir, help="pre-rendered data cache (default: OUT_DIR/../cache)")
    a("--no-cache", dest="cache", action="store_false", help="do not cache pre-rendered data on disk")
    a("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="device")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    path = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}")
    return 0
