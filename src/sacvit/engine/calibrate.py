"""Choosing the exit threshold η on held-out data, for a compute or an accuracy budget.

Which images exit depends only on how η falls between their EE confidences, so every distinct
operating point is "the ``k`` most confident images exit", ``k = 0 … N``. :func:`curve` computes
the accuracy and mean GMACs of all of them at once from per-image :class:`StageRecords` (sorted
cumulative sums, no loop over thresholds); :func:`choose_threshold` picks the point that meets a
budget and returns an η in the middle of its confidence gap, so that a recomputation with
rounding-level differences exits the same images.

η must be chosen on a split the reported numbers do not come from (the ``calibration`` split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import certify
from ..cascade import certify_cascade
from ..data import build_dataset, recorded_source
from ..data.classes import IGNORE_HINT, check_class_names, count_images, describe_data
from ..devices import resolve_device
from ..io.checkpoint import load_checkpoint, read_metadata, update_metadata
from ..model import SACViT
from ..model.dvt import DVT
from .evaluate import SAC_ONLY, CascadeRecords, StageRecords, collect, collect_cascade, plain_correct

__all__ = ["Calibration", "Curve", "Choice", "RULES", "TESTS", "calibrate", "certified_choice", "curve", "curve_rows",
           "choose_threshold", "exit_thresholds",
           "calibration_record", "store_threshold"]


@dataclass
class Curve:
    """Every operating point of a threshold sweep: ``k`` most confident images exit, ``k = 0…N``.

    Attributes:
        threshold: ``(N+1,)`` an η that realises each point (descending: ``k = 0`` is SAC only).
        top1: ``(N+1,)`` accuracy in %.
        gmacs: ``(N+1,)`` mean GMACs per image.
        exit_share: ``(N+1,)`` share of images that exit at EE.
    """

    threshold: np.ndarray
    top1: np.ndarray
    gmacs: np.ndarray
    exit_share: np.ndarray


@dataclass
class Choice:
    """The chosen operating point and why (the ``calibration`` record a checkpoint stores).

    Attributes:
        threshold: η, or ``None`` when a certified rule certified nothing (η then stays as it was).
        top1, gmacs, exit_share: on the calibration images at ``threshold`` (at SAC only when ``None``).
        criterion: the budget in words.
        images: calibration images.
        rule: ``"certified"`` (a finite-sample guarantee, :mod:`sacvit.certify`), ``"estimate"``
            (the point estimate, no guarantee), ``"budget_gmacs"`` or ``"exit_share"``.
        certified: whether a guarantee holds (only the certified rule gives one).
        test: the certified rule's test (``"betting"``, ``"exact"`` or, label-free, ``"agreement"``).
        max_drop, delta: ε in top-1 points and δ of an accuracy budget.
        reference_top1: the reference's top-1 on the calibration images (``None``: label-free).
        bound: the one-sided (1 − δ) upper bound on the drop in points at ``threshold`` (or the best reached).
        statement: the guarantee, or why there is none, in one sentence.
    """

    threshold: float | None
    top1: float | None
    gmacs: float
    exit_share: float
    criterion: str
    images: int
    rule: str = "budget"
    certified: bool = False
    test: str | None = None
    max_drop: float | None = None
    delta: float | None = None
    reference_top1: float | None = None
    bound: float | None = None
    statement: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


RULES = ("certified", "estimate")
TESTS = ("betting", "exact")


def curve(records: StageRecords) -> Curve:
    """All ``N + 1`` operating points of ``records`` (see the module docstring)."""
    n = len(records)
    if n == 0:
        raise ValueError("cannot calibrate on an empty split")
    order = np.argsort(-records.confidence, kind="stable")
    conf = records.confidence[order].astype(np.float32)
    zero = np.zeros(1)
    ee_ok = np.concatenate([zero, np.cumsum(records.correct_ee[order])])
    sac_ok = records.correct_sac[order].sum() - np.concatenate([zero, np.cumsum(records.correct_sac[order])])
    ee_g = np.concatenate([zero, np.cumsum(records.gmacs_ee[order], dtype=np.float64)])
    sac_g = records.gmacs_sac.sum(dtype=np.float64) - np.concatenate([zero, np.cumsum(records.gmacs_sac[order],
                                                                                      dtype=np.float64)])
    thr = np.empty(n + 1)
    thr[0], thr[n] = SAC_ONLY, 0.0
    thr[1:n] = exit_thresholds(conf)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = conf[:-1] > conf[1:]  # equal confidences exit together: no η between them
    k = np.arange(n + 1)[valid]
    return Curve(threshold=thr[valid], top1=100 * (ee_ok + sac_ok)[valid] / n, gmacs=(ee_g + sac_g)[valid] / n,
                 exit_share=k / n)


def exit_thresholds(conf: np.ndarray) -> np.ndarray:
    """For confidences sorted descending (float32), an η per gap ``k`` (``1 … N−1``) that exits exactly
    the ``k`` most confident images when compared in float32, as ``predict`` compares.

    The midpoint of ``(conf[k], conf[k-1]]`` keeps a margin against rounding-level differences in
    a recomputation; where the two are one float32 step apart the midpoint rounds onto ``conf[k]``
    (and would exit one more image), so ``conf[k-1]`` itself is taken. Every η is a float32 value.
    """
    hi, lo = conf[:-1].astype(np.float32), conf[1:].astype(np.float32)
    mid = ((hi.astype(np.float64) + lo.astype(np.float64)) / 2).astype(np.float32)
    return np.where((mid > lo) & (mid <= hi), mid, hi).astype(np.float64)


def choose_threshold(records: StageRecords, *, budget_gmacs: float | None = None, max_drop: float | None = None,
                     reference_top1: float | None = None, exit_share: float | None = None) -> Choice:
    """The operating point that meets exactly one budget.

    Args:
        records: per-image results on a held-out split.
        budget_gmacs: the most accurate point whose mean GMACs per image is ≤ this (ties: cheaper).
        max_drop: the cheapest point at most this many points below ``reference_top1`` (default
            reference: the SAC-only accuracy on the same images).
        reference_top1: the accuracy ``max_drop`` is measured from (e.g. a baseline's, in %).
        exit_share: the most accurate point where at least this share of the images exits.

    Raises:
        ValueError: not exactly one budget given, or no threshold meets it (the message says what
            the closest point reaches).
    """
    given = [v is not None for v in (budget_gmacs, max_drop, exit_share)]
    if sum(given) != 1:
        raise ValueError("give exactly one of budget_gmacs, max_drop and exit_share")
    c = curve(records)
    if budget_gmacs is not None:
        ok = c.gmacs <= budget_gmacs + 1e-12
        if not ok.any():
            raise ValueError(f"no threshold meets {budget_gmacs:g} GMACs per image: exiting every image at EE "
                             f"costs {c.gmacs.min():.4g}")
        best = np.flatnonzero(ok)[np.lexsort((c.gmacs[ok], -c.top1[ok]))[0]]
        criterion = f"most accurate at ≤ {budget_gmacs:g} GMACs/image"
    elif max_drop is not None:
        ref = float(c.top1[0]) if reference_top1 is None else float(reference_top1)
        ok = c.top1 >= ref - max_drop - 1e-9
        if not ok.any():
            raise ValueError(f"no threshold is within {max_drop:g} points of {ref:.2f}%: the best reaches "
                             f"{c.top1.max():.2f}%")
        best = np.flatnonzero(ok)[np.argmin(c.gmacs[ok])]
        criterion = f"cheapest within {max_drop:g} pt of {ref:.2f}%"
    else:
        if not 0.0 <= exit_share <= 1.0:
            raise ValueError(f"exit_share must be in [0, 1], got {exit_share}")
        ok = c.exit_share >= exit_share - 1e-12
        best = np.flatnonzero(ok)[np.lexsort((c.gmacs[ok], -c.top1[ok]))[0]]
        criterion = f"most accurate with ≥ {exit_share:.0%} exiting at EE"
    rule = "budget_gmacs" if budget_gmacs is not None else "estimate" if max_drop is not None else "exit_share"
    return Choice(threshold=float(c.threshold[best]), top1=float(c.top1[best]), gmacs=float(c.gmacs[best]),
                  exit_share=float(c.exit_share[best]), criterion=criterion, images=len(records), rule=rule,
                  max_drop=max_drop, reference_top1=reference_top1)


@dataclass
class Calibration:
    """What :func:`calibrate` chose and on what.

    Attributes:
        choice: the chosen operating point.
        curve: every operating point of the split (``None`` for a cascade: one η, several stages).
        records: the per-image results the curve came from.
        record: the ``calibration`` record stored in the checkpoint metadata.
        written: whether the checkpoint was rewritten.
    """

    choice: Choice
    curve: Curve
    records: StageRecords
    record: dict
    written: bool


def curve_rows(c: Curve, points: int = 11, chosen: float | None = None) -> list[dict]:
    """About ``points`` operating points of ``c`` evenly spread over the exit share (and the one at
    ``chosen``), as rows for a table: threshold, exit share, top-1, GMACs."""
    targets = np.linspace(0.0, 1.0, max(points, 2))
    pick = {int(np.argmin(np.abs(c.exit_share - t))) for t in targets}
    if chosen is not None:
        pick.add(int(np.argmin(np.abs(c.threshold - chosen))))
    return [{"threshold": float(c.threshold[i]), "exit_share": float(c.exit_share[i]), "top1": float(c.top1[i]),
             "gmacs": float(c.gmacs[i]), "chosen": "◀" if chosen is not None and c.threshold[i] == chosen else ""}
            for i in sorted(pick)]


def calibration_record(choice: Choice, budget: dict[str, Any], **source: Any) -> dict[str, Any]:
    """What a checkpoint records of how its η was chosen: the choice, the budget (its given fields)
    and where the images came from, as plain JSON values."""
    record = {**choice.to_dict(), "budget": {k: v for k, v in budget.items() if v is not None}, **source}
    return json.loads(json.dumps(record))


def store_threshold(checkpoint, choice: Choice, record: dict[str, Any]) -> bool:
    """Make ``choice.threshold`` the checkpoint's default η with ``record`` as its calibration record
    (atomic rewrite, weights verified); ``False`` when the checkpoint already holds both, or when
    there is no threshold to store (nothing certified: the checkpoint is left as it was)."""
    if choice.threshold is None:
        return False
    meta = read_metadata(checkpoint)
    if meta.threshold == choice.threshold and meta.calibration == record:
        return False
    update_metadata(checkpoint, threshold=choice.threshold, calibration=record)
    return True


def certified_choice(records: StageRecords, reference_correct: np.ndarray | None, *, max_drop: float,
                     delta: float = 0.05, rule: str = "certified", test: str = "betting") -> Choice:
    """The cheapest η within ``max_drop`` top-1 points of a reference, by ``rule``.

    ``rule="certified"``: Learn-then-Test with ``test`` (:func:`sacvit.certify.certify`): with
    probability ≥ 1 − δ over the calibration images, top-1 at η is at most ε below the reference's
    for images drawn like them. ``reference_correct=None`` and ``test="agreement"``: label-free, the
    guarantee is on disagreement with the model's own SAC-only prediction
    (:func:`sacvit.certify.certify_agreement`). ``rule="estimate"``: the point estimate, no guarantee.
    """
    if max_drop < 0 or not 0 < delta < 1:
        raise ValueError(f"--max-drop must be ≥ 0 and --delta in (0, 1), got {max_drop} and {delta}")
    r = records
    if isinstance(r, CascadeRecords):
        if rule != "certified" or test not in TESTS:
            raise ValueError(f"a cascade is calibrated with rule='certified' and test one of {TESTS}")
        ref = r.correct[:, -1] if reference_correct is None else np.asarray(reference_correct, dtype=bool)
        cert = certify_cascade(r.confidence, r.correct, ref, r.gmacs, max_drop=max_drop, delta=delta, test=test)
        what = "the last stage" if reference_correct is None else "the reference checkpoint"
    elif test == "agreement":
        if r.agree is None:
            raise ValueError("these records hold no EE/SAC agreement (recompute them): the label-free mode needs it")
        cert = certify.certify_agreement(r.confidence, r.agree, r.gmacs_ee, r.gmacs_sac, max_drop=max_drop, delta=delta)
        what = "disagreement with SAC only"
    else:
        if rule not in RULES or test not in TESTS:
            raise ValueError(f"rule must be one of {RULES} and test one of {TESTS}, got {rule!r}, {test!r}")
        ref = r.correct_sac if reference_correct is None else np.asarray(reference_correct, dtype=bool)
        if ref.shape != r.correct_sac.shape:
            raise ValueError(f"the reference has {ref.size} results, the calibration records {r.correct_sac.size}")
        fn = certify.certify if rule == "certified" else certify.estimate_rule
        cert = fn(r.confidence, r.correct_ee, r.correct_sac, ref, r.gmacs_ee, r.gmacs_sac, max_drop=max_drop,
                  delta=delta, test=test)
        what = "SAC only" if reference_correct is None else "the reference checkpoint"
    kind = "certified" if cert.rule == "certified" else "point estimate"
    return Choice(threshold=cert.threshold, top1=cert.top1, gmacs=cert.gmacs, exit_share=cert.exit_share,
                  criterion=f"cheapest within {max_drop:g} pt of {what} ({kind}, δ = {delta:g})", images=cert.images,
                  rule=cert.rule, certified=cert.certified, test=cert.test, max_drop=max_drop, delta=delta,
                  reference_top1=cert.reference_top1, bound=cert.bound, statement=cert.statement)


def calibrate(checkpoint, dataset=None, *, data: str | None = None, data_dir=None, split: str = "calibration",
              length: int | None = None, seed: int | None = None, budget_gmacs: float | None = None,
              max_drop: float | None = None, delta: float = 0.05, rule: str = "certified", test: str = "betting",
              reference_checkpoint=None, agreement: bool = False, exit_share: float | None = None,
              batch_size: int = 64, device=None, write: bool = True, check_names: bool = True,
              log: Callable[[str], Any] | None = None) -> Calibration:
    """Choose η on held-out images for one budget and store it in the checkpoint.

    One pass over the split gives both stages' predictions of every image
    (:func:`~sacvit.engine.evaluate.collect`). With ``max_drop`` (the default budget: 0.5 pt) η is
    the cheapest one *certified* to lose at most that many top-1 points against the reference —
    the same model with every image through SAC, or ``reference_checkpoint`` (e.g. the baseline) —
    with probability ≥ 1 − ``delta`` (:func:`certified_choice`); ``agreement=True`` needs no labels.
    When nothing is certified, the checkpoint keeps its η and the returned choice says so
    (``threshold`` is ``None``). The checkpoint's metadata is rewritten atomically with the same
    weights (verified), so ``sacvit predict``, ``eval``, ``export`` and ``from_pretrained`` use it.

    Args:
        checkpoint: the SAC-ViT checkpoint (``.safetensors``) to calibrate.
        dataset: the images to calibrate on (default: ``build_dataset(data, data_dir, split, …)`` at
            the model's input size; ``data``, ``data_dir`` and ``seed`` default to the checkpoint's
            recorded training data).
        budget_gmacs, exit_share: the other budgets (see :func:`choose_threshold`).
        max_drop, delta, rule, test, reference_checkpoint, agreement: the accuracy budget.
        batch_size, device: of the evaluation pass.
        write: store η in the checkpoint (``False``: only report).
        check_names: refuse data whose ``classes`` are not the checkpoint's class names in order.
        log: called with a one-line summary (checkpoint, η now, data, images, budget, device)
            before the pass over the images (the command line prints it).

    Raises:
        ValueError: not a SAC-ViT checkpoint, more than one budget, class names that differ from
            the data's, or no η meets a GMACs / exit-share budget (the checkpoint is unchanged).
    """
    given = sum(v is not None for v in (budget_gmacs, max_drop, exit_share))
    if given > 1:
        raise ValueError("give at most one budget: --budget-gmacs, --max-drop or --exit-share")
    if given == 0:
        max_drop = 0.5
    model, meta = load_checkpoint(checkpoint)
    if not isinstance(model, (SACViT, DVT)):
        raise ValueError(f"{checkpoint} holds a plain ViT ({meta.model_name}): only an adaptive model (SAC-ViT, "
                         f"CF-ViT, LF-ViT, DVT) has an exit threshold")
    cascade = isinstance(model, DVT)
    if cascade and max_drop is None:
        raise ValueError(f"{checkpoint} is a DVT cascade: calibrate it for an accuracy budget (--max-drop), "
                         f"the GMACs / exit-share budgets need two stages")
    data, data_dir, seed, holdout = recorded_source(meta.data, data, data_dir, seed)
    source = {"data": data, "split": split, "seed": seed, "length": length}
    if dataset is None:
        dataset = build_dataset(data, data_dir, split, int(model.patch_embed.img_size[0]), length=length, seed=seed,
                                holdout=holdout)
        described = describe_data(data, data_dir, split)
    else:
        source = {"data": type(dataset).__name__}
        described = f"the calibration data ({type(dataset).__name__})"
    classes = getattr(dataset, "classes", None)
    if check_names and classes is not None:
        check_class_names(meta.class_names, classes, f"{checkpoint} vs {described}", IGNORE_HINT)
    if classes is not None and len(classes) != model.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes, the calibration data {len(classes)}")
    if log is not None:
        log(_start_summary(checkpoint, meta, model, described, len(dataset), budget_gmacs, max_drop, exit_share,
                           delta, rule, reference_checkpoint, agreement, device))
    records = (collect_cascade if cascade else collect)(model, dataset, batch_size, device)
    if max_drop is not None:
        reference = None
        if reference_checkpoint is not None and not agreement:
            base, base_meta = load_checkpoint(reference_checkpoint)
            if check_names and classes is not None:
                check_class_names(base_meta.class_names, classes, f"{reference_checkpoint} vs {described}", IGNORE_HINT)
            reference = plain_correct(base, dataset, batch_size, device)
            source["reference_checkpoint"] = str(reference_checkpoint)
        choice = certified_choice(records, reference, max_drop=max_drop, delta=delta, rule=rule,
                                  test="agreement" if agreement else test)
    else:
        choice = choose_threshold(records, budget_gmacs=budget_gmacs, exit_share=exit_share)
    budget = {"budget_gmacs": budget_gmacs, "max_drop": max_drop, "exit_share": exit_share}
    record = calibration_record(choice, budget, **source, previous_threshold=meta.threshold)
    written = bool(write) and store_threshold(checkpoint, choice, record)
    return Calibration(choice=choice, curve=None if cascade else curve(records), records=records, record=record,
                       written=written)


def _start_summary(checkpoint, meta, model, described: str, n: int, budget_gmacs, max_drop, exit_share, delta: float,
                   rule: str, reference_checkpoint, agreement: bool, device) -> str:
    """``calibrate: CKPT (MODEL, K classes, η now 0.76) on DATA: N images; budget …; device cpu``."""
    if max_drop is not None:
        against = "agreement with SAC only" if agreement else \
            str(reference_checkpoint) if reference_checkpoint is not None else "SAC only"
        budget = f"--max-drop {max_drop:g} against {against}" + (f", δ = {delta:g}" if rule == "certified" else "") + \
            f" ({rule})"
    else:
        budget = f"--budget-gmacs {budget_gmacs:g}" if budget_gmacs is not None else f"--exit-share {exit_share:g}"
    return (f"calibrate: {checkpoint} ({meta.model_name}, {model.num_classes} classes, η now "
            f"{meta.threshold:.4g}) on {described.removeprefix('--data ')}: {count_images(n)}; "
            f"budget {budget}; device {resolve_device(device)}")
