"""The demo's protocol, fixed before any comparison is run: one recipe, two budgets, one criterion.

* :class:`Recipe` — the fine-tuning recipe every compared model gets (baseline, SAC-ViT, the
  EE-resolution ViT, every ablation), from the same stand-in weights;
* :data:`PRESETS` — ``demo`` (``make demo``, 8–10 minutes on 2 CPU cores from a fresh clone) and ``full``
  (8 epochs, 73–77 minutes on 2 CPU cores without the family: the README's headline numbers);
* :class:`DemoConfig` — one run: a preset plus where the data, the stand-in and the outputs are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.train import TrainConfig

__all__ = ["DEMO_RECIPE", "Recipe", "Preset", "PRESETS", "DemoConfig"]


#: The fine-tuning recipe every compared model gets: :class:`~sacvit.engine.train.TrainConfig` fields.
DEMO_RECIPE: dict[str, Any] = dict(lr=5e-4, batch_size=64, warmup_epochs=0.1, min_lr=1e-5, weight_decay=0.05,
                                   label_smoothing=0.1, drop_path=0.0, clip_grad=1.0, ema=True, ema_decay=0.9998,
                                   select_after=0.25)
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class Recipe(Mapping[str, Any]):
    """A partial :class:`~sacvit.engine.train.TrainConfig`: the recipe fields shared by every compared
    model (the baseline, SAC-ViT, the EE-resolution ViT, every ablation), :data:`DEMO_RECIPE` with
    ``changes`` applied. A plain ViT ignores ``select_after``, SAC-ViT's selection warm-up.

    The values were set once, before the comparisons: AdamW at a fine-tuning learning rate (half
    the stand-in's), a short linear warm-up, cosine decay, label smoothing 0.1 as DeiT, no
    drop-path (4 blocks), gradient clipping at 1, and model EMA (timm ``ModelEmaV3``, decay at
    most 0.9998 with its warm-up ``1 − (1 + t)^(−2/3)``, so short and long runs share one
    setting; CF-/LF-ViT train with EMA). ``select_after = 0.25``: the SAC stage sees the whole
    image for the first quarter of the fine-tuning (CF-/LF-ViT switch selection on after 2/3 of a
    300-epoch run from scratch; fine-tuning from a converged stand-in needs a shorter warm-up).

    Raises:
        ValueError: a name that is not a ``TrainConfig`` field.
    """

    def __init__(self, **changes: Any) -> None:
        unknown = sorted(set(changes) - _TRAIN_FIELDS)
        if unknown:
            raise ValueError(f"not TrainConfig fields: {', '.join(unknown)}")
        self._fields = {**DEMO_RECIPE, **changes}

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self):
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"Recipe({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


@dataclass
class Preset:
    """A training budget and the evaluation sizes.

    Attributes:
        train_length: training images per epoch (the first of the train split; ``None``: all).
        epochs: fine-tuning epochs of every compared model.
        holdout: images of the validation split (baseline checkpoint, exit-score choice; ``None``:
            all 4 000).
        calibration: images of the calibration split η is certified on (``None``: all 8 000).
        test: images of the test split reported on (``None``: all 8 000).
        bench_repeats: timed batches per row of the throughput benchmark.
        family: the predecessors trained and compared (:mod:`~sacvit.demo.family`); no preset
            has any by default (three more fine-tunes do not fit ``make demo``'s 15 minutes nor
            the ``full`` preset's 90).
        exit_scores: also measure the exit-score options on the validation split
            (:mod:`~sacvit.demo.exit_scores`; three more validation passes).
    """

    train_length: int | None
    epochs: int
    holdout: int | None = None
    calibration: int | None = None
    test: int | None = None
    bench_repeats: int = 5
    family: tuple[str, ...] = ()
    exit_scores: bool = False


#: ``full``: 8 epochs, each model reported at its best validation epoch. Measured with
#: ``--against`` a 4-epoch run (README, ``docs/full``): 8 epochs beat 4 for every model on the
#: validation split. The headline alone takes 73–77 min on 2 cores; the family is opt-in
#: (``--family cfvit,lfvit,dvt``: 61–65 min more for CF-ViT and LF-ViT, 80 min for DVT).
PRESETS: dict[str, Preset] = {
    "demo": Preset(train_length=25_000, epochs=1),
    "full": Preset(train_length=None, epochs=8, bench_repeats=10, exit_scores=True),
}


@dataclass
class DemoConfig:
    """One ``sacvit demo`` run.

    Attributes:
        out: output folder (trainings resume, evaluations are cached by checkpoint hash).
        preset: a name of :data:`PRESETS`.
        data_dir: Fashion-MNIST folder (default: the system copy).
        standin: stand-in checkpoint (default: the one shipped in the package).
        recipe: the fine-tuning recipe.
        sac: SAC-ViT configuration overrides. The demo's window side ``m = 3`` (48 px, the
            garments are 24–40 px) was chosen on the held-out split among 3, 4, 5 at the demo
            budget — the side whose calibrated η costs the fewest held-out GMACs (DESIGN's
            default, LF-ViT's ``m = 5`` for ImageNet, stays ``SACConfig``'s default).
        tolerance: ε: η is the cheapest threshold certified (Learn then Test, :mod:`sacvit.certify`)
            to be at most this many top-1 points below the baseline, on the calibration split.
        delta: δ: the certificate holds with probability ≥ 1 − δ over the calibration images.
        thresholds: the η sweep reported on the test split (the calibrated η is added).
        tome_r, evit_keep: the peers' settings on the baseline's weights (spanning the compute of
            SAC-ViT's operating points on the 4-block, 196-token demo ViT).
        ablations: also train and report the Figure-3 set of ablations.
        ablation_keys: only these of :data:`~sacvit.demo.ablations.ABLATIONS` (default: all).
        bench: also time the trained models (batch 64, 2 threads).
        model_kwargs: geometry overrides of the demo models (tests use tiny ones).
        threads: CPU threads of the trainings and evaluations (default: every core; the benchmark
            always uses 2).
        seed: seed of every training and of the data layout.
        overrides: a :class:`Preset` field → value map applied on top of the preset.
        family: the predecessors to train and compare (default: the preset's, none), e.g.
            ``("cfvit", "lfvit", "dvt")``.
        against: another demo output folder, trained with another budget (``--epochs``): each
            compared model is set against its namesake there on the validation split, the
            convergence check (:mod:`~sacvit.demo.convergence`).
    """

    out: str = "runs/demo"
    preset: str = "demo"
    data_dir: str | None = None
    standin: str | None = None
    recipe: Recipe = field(default_factory=Recipe)
    sac: dict[str, Any] = field(default_factory=lambda: {"window": 3})
    tolerance: float = 0.5
    delta: float = 0.05
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    tome_r: tuple[int, ...] = (16, 32, 48)
    evit_keep: tuple[float, ...] = (0.7, 0.5, 0.3)
    ablations: bool = False
    ablation_keys: tuple[str, ...] | None = None
    bench: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    family: tuple[str, ...] | None = None
    against: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.family or ()) - {"cfvit", "lfvit", "dvt"})
        if unknown:
            raise ValueError(f"family: unknown {unknown}; valid: cfvit, lfvit, dvt")
        if self.against is not None and not (Path(self.against) / "demo_config.json").is_file():
            raise ValueError(f"--against {self.against}: not a sacvit demo output folder (no demo_config.json)")

    @property
    def members(self) -> tuple[str, ...]:
        """The predecessors this run trains: ``family``, or the preset's (none)."""
        return self.budget().family

    def budget(self) -> Preset:
        """The preset with ``overrides`` and ``family`` applied: what this run does."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        family = {} if self.family is None else {"family": tuple(self.family)}
        return dataclasses.replace(PRESETS[self.preset], **{**self.overrides, **family})
