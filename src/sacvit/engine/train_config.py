"""The configuration of one training run (:class:`TrainConfig`), one field per ``sacvit train`` option."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "selection_score"]



def selection_score(record: dict[str, Any]) -> float | None:
    """The validation top-1 an epoch's weights are ranked by: the SAC stage's for a SAC-ViT (the
    reference every exit threshold is compared with), the last stage's otherwise; ``None`` for
    an epoch that was not validated."""
    for key in ("val_top1_sac", "val_top1"):
        if key in record:
            return float(record[key])
    return None


@dataclass
class TrainConfig:
    """Everything one training run needs; each field is a ``sacvit train`` option.

    Attributes:
        model: timm model name; ``sacvit_*`` names are SAC-ViT, any other timm ViT is a baseline.
        model_kwargs: extra ``timm.create_model`` arguments (``embed_dim``, ``depth``, …).
        data: dataset name, one of :data:`sacvit.data.DATASET_NAMES`.
        data_dir: dataset folder (Fashion-MNIST idx files, or an image folder with train/ val/).
        img_size: input side in pixels (default: the model's).
        train_length: use only this many training images.
        val_length: validate on only this many held-out images.
        holdout: training images held out for validation (default: 10 000, or a sixth).
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
        ema: keep an exponential moving average of the weights (timm ``ModelEmaV3``), validate
            and save it.
        ema_decay: the EMA's largest decay; with its warm-up the decay at step ``t`` is
            ``min(ema_decay, 1 − (1 + t)^(−2/3))``, so short and long runs share one setting.
        amp: autocast on CUDA (ignored on CPU): ``"none"``, ``"bf16"`` or ``"fp16"`` (the latter with
            a gradient scaler) — :data:`sacvit.devices.AMP_MODES`.
        workers: DataLoader workers per process (default 0 on CPU, up to 8 on GPU).
        threads: CPU threads per process (default ``OMP_NUM_THREADS`` or all cores / local processes).
        seed: seed of the initialisation, the sampler and the synthetic/cluttered data.
        init: backbone checkpoint (DeiT/timm ``.pth``/``.safetensors``) to start from.
        out_dir: output folder.
        resume: continue the run in ``out_dir`` from ``last.safetensors``.
        sac: :class:`~sacvit.config.SACConfig` field overrides for SAC-ViT models.
        select_after: fraction of training during which the SAC stage sees the whole image as
            target (window = full grid); token selection switches on afterwards (CF-/LF-ViT's
            warm-up). SAC-ViT only.
        kl_weight: λ of the loss's KL term (SAC → EE distillation); 0: no KL term. SAC-ViT only.
        kl_tau: temperature τ of the KL term.
        eval_every: validate every N epochs (and after the last one); 0: only after the last.
        log_every: append the all-reduced loss to ``steps.jsonl`` every N steps (0: off).
        cache_dir: folder for pre-rendered Fashion-MNIST arrays (default ``<out_dir>/../cache``).
        cache: use the pre-render cache.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        checkpoint_every: also checkpoint every N optimizer steps within an epoch (0: off).
        checkpoint_minutes: also checkpoint when this many minutes passed since the last one (0: off).
        max_nonfinite: stop when this many steps in a row had a non-finite loss or gradient
            (each one is skipped: no update, no EMA step; counted in ``metrics.jsonl``).
        strict: fail on the first unreadable training image instead of skipping it.
    """

    model: str = "sacvit_demo_patch8_112"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "cluttered-fmnist"
    data_dir: str | None = None
    img_size: int | None = None
    train_length: int | None = None
    val_length: int | None = None
    holdout: int | None = None
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
    ema: bool = True
    ema_decay: float = 0.9998
    amp: str = "bf16"
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    init: str | None = None
    out_dir: str = "runs/train"
    resume: bool = False
    sac: dict[str, Any] = field(default_factory=dict)
    select_after: float = 0.0
    kl_weight: float = 1.0
    kl_tau: float = 1.0
    eval_every: int = 1
    log_every: int = 0
    cache_dir: str | None = None
    cache: bool = True
    device: str = "auto"
    checkpoint_every: int = 0
    checkpoint_minutes: float = 30.0
    max_nonfinite: int = 5
    strict: bool = False
