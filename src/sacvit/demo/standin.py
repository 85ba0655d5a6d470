"""The demo's stand-in for DeiT: a plain ViT trained at full resolution until it stops improving.

The paper fine-tunes SAC-ViT from a DeiT that was trained at the full resolution; the demo does
the same from this stand-in, shipped inside the package (``assets/standin.safetensors``) with a
JSON record (``assets/standin.json``) of its recipe, the command that made it, its held-out
validation curve, its wall-clock and its SHA-256, which is verified before every use.
``sacvit standin`` re-creates it (about two hours on 2 CPU cores); nothing is pretrained at the
early-exit resolution, and the baseline and SAC-ViT both start from exactly these weights.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.train import TrainConfig, train
from ..io.checkpoint import read_metadata, sha256_file
from ..io.run_files import CHECKPOINT, METRICS
from ..io.train_state import has_checkpoint
from .config import Recipe

__all__ = ["StandinRecipe", "ASSET", "RECORD", "standin_path", "sha256", "make_standin"]

ASSET = Path(__file__).parent.parent / "assets" / "standin.safetensors"
RECORD = ASSET.with_suffix(".json")


@dataclass
class StandinRecipe:
    """How the stand-in is trained: the plain demo ViT at 112 px on the train split, from scratch,
    with the demo's :class:`~sacvit.demo.config.Recipe` at the from-scratch learning rate (twice the
    fine-tuning one) and a one-epoch warm-up."""

    model: str = "deit_demo_patch8_112"
    data: str = "cluttered-fmnist"
    epochs: int = 20
    seed: int = 0
    optim: Recipe = field(default_factory=lambda: Recipe(lr=1e-3, warmup_epochs=1.0, select_after=0.0))

    def train_fields(self) -> dict[str, Any]:
        """The :class:`~sacvit.engine.train.TrainConfig` fields of the recipe."""
        return {"model": self.model, "data": self.data, "epochs": self.epochs, "seed": self.seed, **self.optim}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "epochs": self.epochs, "seed": self.seed,
                "optim": dict(self.optim)}


sha256 = sha256_file  # hex SHA-256 of a file (the one implementation, in io.checkpoint)


def standin_path(path: str | Path | None = None) -> Path:
    """The stand-in checkpoint, its SHA-256 checked against its record.

    Args:
        path: another stand-in (its record is ``PATH`` with ``.json``); default: the packaged one.

    Raises:
        FileNotFoundError: no stand-in there (says how to make one).
        ValueError: the file does not match the SHA-256 of its record.
    """
    weights = Path(path) if path is not None else ASSET
    record = weights.with_suffix(".json")
    if not weights.is_file() or not record.is_file():
        raise FileNotFoundError(f"no stand-in checkpoint at {weights} (with {record.name}); make one with "
                                f"`sacvit standin --out runs/standin` and pass --standin runs/standin/standin.safetensors")
    expected = json.loads(record.read_text()).get("sha256")
    actual = sha256(weights)
    if actual != expected:
        raise ValueError(f"{weights}: SHA-256 {actual[:16]}… does not match its record {record.name} "
                         f"({str(expected)[:16]}…); the file is damaged or was replaced")
    return weights


def make_standin(out_dir: str | Path, recipe: StandinRecipe | None = None, data_dir: str | None = None,
                 install: bool = False, **overrides: Any) -> Path:
    """Train the stand-in (resumable) and write ``standin.safetensors`` + ``standin.json`` to ``out_dir``.

    Args:
        out_dir: training folder; the run lives in ``out_dir/train``.
        recipe: the recipe (default :class:`StandinRecipe`).
        data_dir: Fashion-MNIST folder (default: the system copy).
        install: also copy both files into the package's ``assets/`` (what ships with sacvit).
        **overrides: more :class:`~sacvit.engine.train.TrainConfig` fields (tests use tiny models).

    Returns:
        The written ``standin.safetensors``.
    """
    recipe = recipe or StandinRecipe()
    out = Path(out_dir)
    run = out / "train"
    t0 = time.time()
    resume = (run / CHECKPOINT).is_file() or has_checkpoint(run)  # also a run killed within its first epoch
    fields = {**recipe.train_fields(), "data_dir": data_dir, "out_dir": str(run), "resume": resume,
              "cache_dir": str(out / "cache"), **overrides}
    ckpt = run / CHECKPOINT
    if not (ckpt.is_file() and read_metadata(ckpt).epoch >= recipe.epochs):
        ckpt = train(TrainConfig(**fields))
    weights = out / "standin.safetensors"
    shutil.copyfile(ckpt, weights)
    curve = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    record = {
        "what": "plain ViT trained at the full resolution: the demo's stand-in for DeiT",
        "model": recipe.model, "recipe": recipe.to_dict(), "overrides": {k: v for k, v in overrides.items()},
        "command": f"sacvit standin --out {out}" + (" --install" if install else ""),
        "curve": [{"epoch": r["epoch"], "images": r["steps"] * recipe.optim["batch_size"],
                   **{k: v for k, v in r.items() if k.startswith("val_")}} for r in curve],
        "seconds_this_call": time.time() - t0,
        "train_seconds": sum(r.get("seconds", 0.0) for r in curve),
        "sha256": sha256(weights),
    }
    weights.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    if install:
        ASSET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, ASSET)
        shutil.copyfile(weights.with_suffix(".json"), RECORD)
    return weights
