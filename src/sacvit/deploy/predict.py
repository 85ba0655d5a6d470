"""``sacvit predict``: classify image files with a trained SAC-ViT, batched, bad files reported.

:func:`find_images` expands files and folders (recursively) into a list of paths;
:func:`predict_files` reads them (:func:`~sacvit.data.preprocess.open_image` + the checkpoint's
preprocessing), runs ``predict`` on batches and yields one :class:`Result` per path — the top-k
classes, the stage the image ended in, its GMACs and window box, or why the file could not be
read. Any predictor with ``predict(x, threshold)``, ``class_names`` and ``preprocess`` serves: a
model from :func:`~sacvit.deploy.pretrained.from_pretrained` or an
:class:`~sacvit.runtime.OnnxSACViT`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..data.preprocess import IMAGE_SUFFIXES, open_image
from ..report import Column

__all__ = ["Result", "find_images", "predict_files", "TABLE", "load_images"]


@dataclass
class Result:
    """The prediction for one file, or the reason it has none.

    Attributes:
        path: the file.
        top_k: ``[(class name, class index, probability), …]``, most probable first.
        stage: ``"EE"`` (exited early) or ``"SAC"``.
        confidence: EE top-1 probability (compared with ``threshold``).
        gmacs: GMACs spent on the image.
        box: SAC target window ``(x0, y0, x1, y1)`` in the original image's pixels, ``None`` after an exit.
        box_input: the same window in model-input pixels (after resize and centre crop).
        size: the original image's ``(width, height)``.
        threshold: the exit threshold η used.
        error: why the file could not be read (then the other fields are empty).
    """

    path: str
    top_k: list[tuple[str, int, float]] = field(default_factory=list)
    stage: str | None = None
    confidence: float | None = None
    gmacs: float | None = None
    box: tuple[int, int, int, int] | None = None
    threshold: float | None = None
    error: str | None = None
    box_input: tuple[int, int, int, int] | None = None
    size: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top_k": [{"class": c, "index": i, "prob": p} for c, i, p in self.top_k],
                "stage": self.stage, "ee_confidence": self.confidence, "gmacs": self.gmacs,
                "box": None if self.box is None else list(self.box),
                "box_input": None if self.box_input is None else list(self.box_input),
                "size": None if self.size is None else list(self.size), "threshold": self.threshold}

    def row(self) -> dict[str, Any]:
        """A flat row for :data:`TABLE`."""
        top = self.top_k[0] if self.top_k else (None, None, None)
        return {"path": self.path, "class": top[0], "prob": top[2], "stage": self.stage, "ee": self.confidence,
                "gmacs": self.gmacs, "box": None if self.box is None else ",".join(map(str, self.box)),
                "top_k": ", ".join(f"{c} {p:.2f}" for c, _, p in self.top_k[1:]) or None}


#: The table ``sacvit predict`` prints.
TABLE = (Column("file", "path"), Column("class", "class"), Column("prob", "prob", "{:.3f}"),
         Column("stage", "stage"), Column("EE conf", "ee", "{:.3f}"), Column("GMACs", "gmacs", "{:.4f}"),
         Column("box x0,y0,x1,y1 (image px)", "box"), Column("next classes", "top_k"))


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded recursively to their image files (sorted, by suffix).

    A path that does not exist is kept, so that it is reported as a failure like any other; so is a
    broken symbolic link (or an unreadable file) with an image suffix inside a folder: it is reported
    with its reason and makes the exit status 1, never skipped without a word.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if (f.is_file() or (f.is_symlink() and not f.exists()))
                              and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def load_images(paths: Sequence[Path], preprocess,
                sizes: list[tuple[int, int]] | None = None) -> tuple[list[torch.Tensor], list[Path], list[Result]]:
    """The evaluation tensors of the readable files, their paths, and a :class:`Result` per failure
    (with ``sizes``, each readable image's original ``(width, height)`` is appended to it)."""
    tensors, ok, failed = [], [], []
    for p in paths:
        try:
            image = open_image(p)
        except ValueError as err:
            failed.append(Result(path=str(p), error=str(err).removeprefix(f"cannot read image {p}: ")))
            continue
        try:
            tensors.append(preprocess(image))
            ok.append(p)
            if sizes is not None:
                sizes.append(image.size)
        except Exception as err:  # a decodable image in a mode PIL cannot convert (LAB, HSV, …)
            failed.append(Result(path=str(p), error=f"cannot preprocess a {image.mode} image: {err}"))
    return tensors, ok, failed


def _results(pred, paths: Sequence[Path], class_names: Sequence[str], top_k: int, threshold: float,
             sizes: Sequence[tuple[int, int]] | None = None, preprocess=None) -> list[Result]:
    probs = pred.logits.float().softmax(dim=-1).cpu()
    p, idx = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    stage, conf, gmacs, box = pred.stage.cpu(), pred.confidence.cpu(), pred.gmacs.cpu(), pred.box.cpu()
    out = []
    for i, path in enumerate(paths):
        inner = tuple(int(v) for v in box[i]) if int(stage[i]) == 1 else None
        size = tuple(sizes[i]) if sizes is not None else None
        outer = preprocess.box_to_original(inner, size) if inner is not None and size and preprocess else inner
        out.append(Result(path=str(path), top_k=[(class_names[j], int(j), float(q)) for q, j in zip(p[i], idx[i])],
                          stage="SAC" if int(stage[i]) == 1 else "EE", confidence=float(conf[i]),
                          gmacs=float(gmacs[i]), box=outer, box_input=inner, size=size, threshold=threshold))
    return out


def predict_files(predictor, paths: Sequence[str | Path], *, threshold: float | None = None, top_k: int = 5,
                  batch_size: int = 32, device: str | torch.device | None = None) -> Iterator[Result]:
    """One :class:`Result` per path of ``paths``, in order, predicted in batches.

    Args:
        predictor: a model from ``from_pretrained`` or an ``OnnxSACViT`` (``predict``, ``class_names``,
            ``preprocess``).
        paths: image files (see :func:`find_images` for folders).
        threshold: exit threshold η (default: the predictor's, i.e. the checkpoint's calibrated η).
        top_k: classes reported per image.
        batch_size: images per ``predict`` call.
        device: where the batches go (default: the model's device; ignored for onnxruntime).

    Raises:
        ValueError: ``top_k`` or ``batch_size`` below 1.
    """
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"--top-k and --batch-size must be ≥ 1, got {top_k} and {batch_size}")
    thr = float(predictor.threshold if threshold is None else threshold)
    if device is None:
        device = getattr(predictor, "device", "cpu")
    paths = [Path(p) for p in paths]
    bar = tqdm(total=len(paths), desc="predicting", unit="img", leave=False, disable=not sys.stderr.isatty())
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            sizes: list[tuple[int, int]] = []
            tensors, ok, failed = load_images(chunk, predictor.preprocess, sizes)
            done = {r.path: r for r in failed}
            if tensors:
                with torch.inference_mode():
                    pred = predictor.predict(torch.stack(tensors).to(device), thr)
                done.update((r.path, r) for r in _results(pred, ok, predictor.class_names, top_k, thr, sizes,
                                                          predictor.preprocess))
            for p in chunk:
                yield done[str(p)]
            bar.update(len(chunk))
    finally:
        bar.close()
