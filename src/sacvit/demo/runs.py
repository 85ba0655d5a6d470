"""The compared trainings of the demo, each a fine-tuning of the same stand-in with the same recipe.

Every run lives in its own folder under the demo's output and resumes where it stopped; a
finished run is reused. The compared models:

* ``baseline`` — the plain ViT at the full resolution (112 px, 14×14 tokens): the DeiT of the demo;
* ``sacvit`` — SAC-ViT (EE at 56 px, SAC on the target window at 112 px);
* ``ee_res`` — the plain ViT at the EE resolution (56 px, 7×7 tokens): what the early exit alone
  can reach when it is a model of its own;
* one SAC-ViT per ablation (``sacvit demo --ablations``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..engine.train import TrainConfig, train
from ..io.checkpoint import read_metadata
from ..io.run_files import BEST, CHECKPOINT, METRICS
from ..io.train_state import has_checkpoint
from ..model.registry import method_of
from .config import DemoConfig

__all__ = ["SAC_MODEL", "PLAIN_MODEL", "fine_tune", "chosen_weights", "curve"]

SAC_MODEL, PLAIN_MODEL = "sacvit_demo_patch8_112", "deit_demo_patch8_112"


def fine_tune(cfg: DemoConfig, name: str, model: str, standin: Path, *, sac: dict[str, Any] | None = None,
              recipe_changes: dict[str, Any] | None = None, img_size: int | None = None) -> Path:
    """Fine-tune ``model`` from ``standin`` into ``OUT/name`` (resume or reuse); its checkpoint:
    the weights of its best epoch on the validation split (early stopping: a model never ends
    below an earlier epoch of itself) — ``last.safetensors`` when that is the last epoch (or the
    folder predates best checkpoints), ``best.safetensors`` otherwise.

    ``sac`` changes the SAC configuration, ``recipe_changes`` the recipe (an ablation's change). The
    demo's SAC-ViT settings (``cfg.sac``) apply to SAC-ViT only; a predecessor starts from its own
    defaults (:mod:`sacvit.model.family`) plus ``sac``."""
    budget = cfg.budget()
    out = Path(cfg.out) / name
    ckpt = out / CHECKPOINT
    recipe = dict(cfg.recipe)
    kwargs = dict(cfg.model_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    method = method_of(model)
    own = dict(cfg.sac) if method == "sacvit" else {}
    run = TrainConfig(
        model=model, model_kwargs=kwargs, data="cluttered-fmnist", data_dir=cfg.data_dir,
        train_length=budget.train_length, epochs=budget.epochs, init=str(standin), seed=cfg.seed,
        out_dir=str(out), eval_every=1, threads=cfg.threads, cache_dir=str(Path(cfg.out) / "cache"),
        sac={**own, **(sac or {})} if method is not None else {}, **{**recipe, **(recipe_changes or {})})
    resume = ckpt.is_file() or has_checkpoint(out)  # also a run killed within its first epoch
    if resume:
        _check_same_run(out, run)
    if ckpt.is_file() and read_metadata(ckpt).epoch >= budget.epochs:
        print(f"reusing {out} ({budget.epochs} epochs; delete the folder to retrain)", flush=True)
    else:
        print(f"{'resuming' if resume else 'training'} {name}: {model} from the stand-in → {out}", flush=True)
        train(dataclasses.replace(run, resume=resume))
    chosen = chosen_weights(out)
    if chosen.name == BEST:
        print(f"{name}: the weights of epoch {read_metadata(chosen).epoch}, its best on the validation split", flush=True)
    return chosen


def chosen_weights(run_dir: Path) -> Path:
    """The weights a finished run folder is reported with: its best epoch on the validation split
    (``best.safetensors``) when that is not the last, else ``last.safetensors``."""
    best, last = Path(run_dir) / BEST, Path(run_dir) / CHECKPOINT
    if best.is_file() and read_metadata(best).epoch != read_metadata(last).epoch:
        return best
    return last


#: TrainConfig fields that do not change what is trained.
_INCIDENTAL = {"out_dir", "resume", "threads", "workers", "cache_dir", "cache", "data_dir", "device",
               "log_every", "checkpoint_every", "checkpoint_minutes"}


def _check_same_run(out: Path, run) -> None:
    """A run folder is only reused or resumed for the very training it holds."""
    path = out / "config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    wanted = json.loads(json.dumps(dataclasses.asdict(run)))
    changed = sorted(k for k in wanted if k not in _INCIDENTAL and saved.get(k) != wanted[k])
    if changed:
        raise ValueError(f"{out} holds a training with other settings ({', '.join(changed)}: "
                         f"{', '.join(f'{saved.get(k)!r} → {wanted[k]!r}' for k in changed)}); delete the folder "
                         f"or pick another --out")


def curve(run_dir: Path, key: str) -> list[tuple[float, float]]:
    """``(training images seen, held-out top-1)`` per validated epoch of a run."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    batch = json.loads((Path(run_dir) / "config.json").read_text())["batch_size"]
    return [(r["steps"] * batch, r[key]) for r in rows if key in r]
