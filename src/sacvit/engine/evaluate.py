"""Threshold sweep of a trained SAC-ViT: accuracy (95% interval), exit share, per-stage accuracy,
GMACs and throughput per η.

Accuracy and GMACs of every threshold come from one pass over the data (:func:`collect`): each
image's EE and SAC predictions are computed once (:meth:`SACViT.predict_stages`), and threshold
η picks the EE one when the EE confidence is ≥ η — exactly :meth:`SACViT.predict`'s rule. The
per-image records (:class:`StageRecords`) also serve calibration and paired tests. Throughput is
measured separately with real ``predict(x, η)`` calls on the same few batches for every row.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import cascade, flops
from ..data.classes import IGNORE_HINT, check_class_names
from ..devices import resolve_device
from ..io.checkpoint import load_checkpoint, read_metadata
from ..model import SACViT
from ..model.dvt import DVT
from ..stats import wilson_interval
from .timing import throughput

__all__ = ["StageRecords", "CascadeRecords", "collect", "collect_cascade", "ee_logits", "plain_correct", "sweep", "evaluate", "COLUMNS", "SAC_ONLY",
           "DEFAULT_THRESHOLDS", "baseline_row"]

SAC_ONLY = 1.01  # above any softmax probability: every image goes through SAC
DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.76, 0.8, 0.9, 0.95)
COLUMNS = ("label", "mode", "threshold", "top1", "top1_low", "top1_high", "exit_share", "top1_exited",
           "top1_sac", "gmacs", "img_per_s", "images", "model")


@dataclass
class StageRecords:
    """Per-image results of both stages on one dataset: enough to evaluate any threshold.

    Attributes:
        confidence: ``(N,)`` EE top-1 softmax probability (compared with η).
        correct_ee, correct_sac: ``(N,)`` bool, the EE / SAC prediction is right.
        gmacs_ee, gmacs_sac: ``(N,)`` GMACs spent when the image exits at EE / goes through SAC.
        agree: ``(N,)`` bool, the EE prediction equals the SAC prediction (needs no label: what
            the label-free calibration tests); ``None`` in records saved before it was recorded.
    """

    confidence: np.ndarray
    correct_ee: np.ndarray
    correct_sac: np.ndarray
    gmacs_ee: np.ndarray
    gmacs_sac: np.ndarray
    agree: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.confidence)

    def at(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(exited, correct, gmacs)`` per image at ``threshold``."""
        exited = self.confidence >= np.float32(threshold)  # float32, as predict compares
        return exited, np.where(exited, self.correct_ee, self.correct_sac), np.where(exited, self.gmacs_ee,
                                                                                     self.gmacs_sac)

    def row(self, threshold: float, mode: str = "sacvit", label: str | None = None) -> dict[str, Any]:
        """Top-1 (%, with its 95% Wilson interval), exit share, per-stage top-1 and mean GMACs."""
        exited, correct, gmacs = self.at(threshold)
        n, k, n_exit = len(self), int(correct.sum()), int(exited.sum())
        low, high = wilson_interval(k, n)
        return {
            "label": label or {"ee_only": "EE only", "sac_only": "SAC only"}.get(mode, f"SAC-ViT η={threshold:g}"),
            "mode": mode, "threshold": float(threshold), "top1": 100 * k / n, "top1_low": 100 * low,
            "top1_high": 100 * high, "exit_share": n_exit / n,
            "top1_exited": 100 * float(self.correct_ee[exited].mean()) if n_exit else None,
            "top1_sac": 100 * float(self.correct_sac[~exited].mean()) if n_exit < n else None,
            "gmacs": float(gmacs.mean()), "images": n,
        }

    def save(self, path: str | Path) -> Path:
        np.savez(path, **{k: v for k, v in self.__dict__.items() if v is not None})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "StageRecords":
        with np.load(path) as f:
            return cls(**{k: f[k] for k in ("confidence", "correct_ee", "correct_sac", "gmacs_ee", "gmacs_sac")},
                       agree=f["agree"] if "agree" in f.files else None)


@dataclass
class CascadeRecords:
    """Per-image results of every stage of a cascade (DVT) on one dataset.

    Attributes:
        confidence, correct, gmacs: ``(N, S)`` per image and stage: the stage's top-1 probability,
            whether its prediction is right, and the total GMACs when that stage answers.

    ``at``/``row`` answer as :class:`StageRecords` does ("exited" = answered by the first stage;
    ``top1_sac`` = top-1 of the images answered later), so sweeps, reports and paired tests take
    either.
    """

    confidence: np.ndarray
    correct: np.ndarray
    gmacs: np.ndarray
    agree = None  # no label-free mode for cascades

    def __len__(self) -> int:
        return len(self.confidence)

    def stages(self, threshold: float) -> np.ndarray:
        """``(N,)`` the stage answering each image at ``threshold``."""
        return cascade.stage_at(self.confidence, threshold)

    def at(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, rows = self.stages(threshold), np.arange(len(self))
        return s == 0, self.correct[rows, s], self.gmacs[rows, s]

    def row(self, threshold: float, mode: str = "cascade", label: str | None = None) -> dict[str, Any]:
        exited, correct, gmacs = self.at(threshold)
        n, k, n_exit = len(self), int(correct.sum()), int(exited.sum())
        low, high = wilson_interval(k, n)
        return {"label": label or f"cascade η={threshold:g}", "mode": mode, "threshold": float(threshold),
                "top1": 100 * k / n, "top1_low": 100 * low, "top1_high": 100 * high, "exit_share": n_exit / n,
                "top1_exited": 100 * float(correct[exited].mean()) if n_exit else None,
                "top1_sac": 100 * float(correct[~exited].mean()) if n_exit < n else None,
                "gmacs": float(gmacs.mean()), "images": n,
                "stage_shares": np.bincount(self.stages(threshold), minlength=self.confidence.shape[1]).tolist()}

    def save(self, path: str | Path) -> Path:
        np.savez(path, confidence=self.confidence, correct=self.correct, gmacs=self.gmacs)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CascadeRecords":
        with np.load(path) as f:
            return cls(f["confidence"], f["correct"], f["gmacs"])


def _load(model: nn.Module | str | Path, device: torch.device) -> tuple[nn.Module, str]:
    if isinstance(model, nn.Module):
        return model.to(device).eval(), type(model).__name__
    net, meta = load_checkpoint(model, map_location=device)
    return net, meta.model_name


def _check_names(source: nn.Module | str | Path | None, dataset: Dataset, model: nn.Module | None = None) -> None:
    """The class names of a checkpoint (or of an object with ``class_names``) against the dataset's ``classes``."""
    classes = getattr(dataset, "classes", None)
    if source is None or classes is None:
        return
    if isinstance(source, (str, Path)):
        check_class_names(read_metadata(source).class_names, classes, f"{source} vs the evaluation data", IGNORE_HINT)
    elif getattr(source, "class_names", None) is not None:
        check_class_names(source.class_names, classes, f"the model ({type(source).__name__}) vs the evaluation data",
                          IGNORE_HINT)


def _batches(dataset: Dataset, batch_size: int, workers: int, device: torch.device, desc: str):
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not sys.stderr.isatty()):
        yield x.to(device), torch.as_tensor(y).to(device)


@torch.no_grad()
def collect(model: nn.Module, dataset: Dataset, batch_size: int = 64, device: str | torch.device | None = None,
            workers: int = 0) -> StageRecords:
    """Both stages' predictions of a SAC-ViT for every image of ``dataset`` (one pass)."""
    device = resolve_device(device)
    model = model.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in StageRecords.__dataclass_fields__}
    for x, y in _batches(dataset, batch_size, workers, device, "evaluating"):
        ee, sac = model.predict_stages(x)
        parts["confidence"].append(ee.confidence)
        parts["correct_ee"].append(ee.logits.argmax(-1) == y)
        parts["correct_sac"].append(sac.logits.argmax(-1) == y)
        parts["gmacs_ee"].append(ee.gmacs)
        parts["gmacs_sac"].append(sac.gmacs)
        parts["agree"].append(ee.logits.argmax(-1) == sac.logits.argmax(-1))
    return StageRecords(**{k: torch.cat(v).cpu().numpy() for k, v in parts.items()})


@torch.no_grad()
def ee_logits(model: nn.Module, dataset: Dataset, batch_size: int = 64, device: str | torch.device | None = None,
              workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The EE stage's logits of a SAC-ViT and the labels, for every image of ``dataset`` (CPU tensors)."""
    device = resolve_device(device)
    model = model.to(device).eval()
    out = [(model.forward_ee(x, need_gca=False).logits.float().cpu(), y.cpu())
           for x, y in _batches(dataset, batch_size, workers, device, "EE logits")]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


@torch.no_grad()
def collect_cascade(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                    device: str | torch.device | None = None, workers: int = 0) -> CascadeRecords:
    """Every stage's prediction of a cascade (``model.predict_stages``) for every image of ``dataset``."""
    device = resolve_device(device)
    model = model.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {"confidence": [], "correct": [], "gmacs": []}
    for x, y in _batches(dataset, batch_size, workers, device, "evaluating"):
        preds = model.predict_stages(x)
        parts["confidence"].append(torch.stack([p.logits.float().softmax(-1).amax(-1) for p in preds], 1))
        parts["correct"].append(torch.stack([p.logits.argmax(-1) == y for p in preds], 1))
        parts["gmacs"].append(torch.stack([p.gmacs for p in preds], 1))
    return CascadeRecords(**{k: torch.cat(v).cpu().numpy() for k, v in parts.items()})


@torch.no_grad()
def plain_correct(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                  device: str | torch.device | None = None, workers: int = 0) -> np.ndarray:
    """``(N,)`` bool: is a plain classifier right on each image of ``dataset``."""
    device = resolve_device(device)
    model = model.to(device).eval()
    out = [model(x).argmax(-1) == y for x, y in _batches(dataset, batch_size, workers, device, "baseline")]
    return torch.cat(out).cpu().numpy()


def sweep(records: StageRecords, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """One row per threshold, then the "EE only" (η = 0) and "SAC only" (η > 1) rows."""
    rows = [records.row(float(t)) for t in thresholds]
    return rows + [records.row(0.0, "ee_only"), records.row(SAC_ONLY, "sac_only")]


def baseline_row(correct: np.ndarray, model: nn.Module, name: str) -> dict[str, Any]:
    """The row of a plain baseline: top-1 with its interval and its closed-form GMACs."""
    n, k = len(correct), int(correct.sum())
    low, high = wilson_interval(k, n)
    return {"label": f"baseline {name}", "mode": "baseline", "threshold": None, "top1": 100 * k / n,
            "top1_low": 100 * low, "top1_high": 100 * high, "exit_share": None, "top1_exited": None,
            "top1_sac": None, "gmacs": flops.vit_gmacs(model), "images": n, "model": name}


def evaluate(
    checkpoint_or_model: nn.Module | str | Path,
    dataset: Dataset,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    batch_size: int = 64,
    baseline: nn.Module | str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    workers: int = 0,
    timing_batches: int = 8,
    check_names: bool = True,
) -> list[dict[str, Any]]:
    """Sweep the exit threshold of a SAC-ViT on ``dataset``.

    Args:
        checkpoint_or_model: a SAC-ViT, or the path of a checkpoint of one.
        dataset: ``(image, label)`` pairs at the model's input size.
        thresholds: exit thresholds η in [0, 1].
        batch_size: evaluation batch size.
        baseline: a plain ViT (or its checkpoint) to compare with, on the same data.
        device: default CUDA when available.
        workers: DataLoader workers.
        timing_batches: batches timed per row for the throughput (after one warm-up batch; 0: none).
        check_names: refuse a checkpoint (or a model with ``class_names``) whose class names are not
            the dataset's ``classes`` in the same order (``False``: match classes by index).

    Returns:
        One dict per row with :data:`COLUMNS`: ``mode`` is ``"sacvit"`` (one per threshold),
        ``"ee_only"`` (η = 0), ``"sac_only"`` (η = 1.01) or ``"baseline"``; ``top1`` and its
        95% interval in %, ``exit_share`` in [0, 1], ``top1_exited`` / ``top1_sac`` the accuracy of
        the images that exit / go through SAC, ``gmacs`` the mean per image, ``img_per_s``.

    Raises:
        ValueError: not a SAC-ViT, a class count (or, with ``check_names``, class names) that does
            not match the data, an empty dataset.
    """
    device = resolve_device(device)
    model, name = _load(checkpoint_or_model, device)
    if not isinstance(model, (SACViT, DVT)):
        raise ValueError(f"{checkpoint_or_model} is not a SAC-ViT or a DVT cascade ({name}); pass plain ViTs as "
                         f"the baseline")
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty")
    if check_names:  # before any long pass: the SAC-ViT's names, then the baseline's
        _check_names(checkpoint_or_model, dataset, model)
        _check_names(baseline, dataset)
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) != model.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes, the dataset {len(classes)}")
    gather = collect_cascade if isinstance(model, DVT) else collect
    rows = sweep(gather(model, dataset, batch_size, device, workers), thresholds)
    timing = [x for _, (x, _) in zip(range(timing_batches + 1), _batches(dataset, batch_size, 0, device, "timing"))]
    for r in rows:
        r["model"] = name
        r["img_per_s"] = throughput(lambda b, t=r["threshold"]: model.predict(b, t), timing, device) \
            if timing_batches else None
    if baseline is not None:
        net, base_name = _load(baseline, device)
        row = baseline_row(plain_correct(net, dataset, batch_size, device, workers), net, base_name)
        row["img_per_s"] = throughput(net, timing, device) if timing_batches else None
        rows.append(row)
    return rows
