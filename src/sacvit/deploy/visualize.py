"""``sacvit visualize``: Figure-5 style pictures of what a SAC-ViT chose for image files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from .. import viz
from .predict import Result, load_images
from .pretrained import Pretrained

__all__ = ["panels", "visualize_files"]


@torch.no_grad()
def panels(pretrained: Pretrained, x: torch.Tensor, titles: Sequence[str],
           threshold: float | None = None) -> list[viz.Panel]:
    """One :class:`~sacvit.viz.Panel` per image of the batch ``x`` (``pretrained`` from ``from_pretrained``).

    The window and clusters are the ones ``predict`` uses; an image that exits at EE gets the window
    the SAC stage would have used (drawn dashed).
    """
    model = pretrained.model
    thr = model.sac_config.threshold if threshold is None else float(threshold)
    pred = model.predict(x, thr)
    ee = model.forward_ee(x)
    B = x.shape[0]
    target, boxes = (t.cpu() for t in model.target_selection(ee))
    p_ee = ee.logits.float().softmax(-1).cpu()
    p_final = pred.logits.float().softmax(-1).cpu()
    names = pretrained.class_names
    out = []
    for i in range(B):
        ce, cf = int(p_ee[i].argmax()), int(p_final[i].argmax())
        out.append(viz.Panel(image=pretrained.preprocess.denormalize(x[i]), gca=ee.gca[i].float().cpu().numpy(),
                             target=target[i].numpy(), box=tuple(int(v) for v in boxes[i]),
                             ee=(names[ce], float(p_ee[i, ce])), final=(names[cf], float(p_final[i, cf])),
                             exited=int(pred.stage[i]) == 0, title=titles[i]))
    return out


def visualize_files(model: Pretrained, paths: Sequence[str | Path], out_dir: str | Path, *, grid: bool = False,
                    per_row: int = 2, threshold: float | None = None, batch_size: int = 16
                    ) -> tuple[list[Path], list[Result]]:
    """Write a Figure-5 PNG per readable image (or one sheet with ``grid``) under ``out_dir``.

    Returns:
        The PNG paths and a :class:`~sacvit.deploy.predict.Result` (with ``error``) per unreadable file.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    device = model.device
    thr = model.threshold if threshold is None else float(threshold)
    paths = [Path(p) for p in paths]
    pngs: list[Path] = []
    failed: list[Result] = []
    sheet: list[viz.Panel] = []
    used: dict[str, int] = {}
    for start in tqdm(range(0, len(paths), batch_size), desc="visualizing", leave=False,
                      disable=not sys.stderr.isatty()):
        tensors, ok, bad = load_images(paths[start:start + batch_size], model.preprocess)
        failed += bad
        if not tensors:
            continue
        batch = panels(model, torch.stack(tensors).to(device), [p.name for p in ok], thr)
        if grid:
            sheet += batch
            continue
        for p, panel in zip(ok, batch):
            k = used[p.stem] = used.get(p.stem, -1) + 1  # same stem in two folders: number them
            pngs.append(viz.figure5([panel], out / f"{p.stem}{f'-{k}' if k else ''}.png", suptitle=f"η={thr:g}"))
    if grid and sheet:
        pngs.append(viz.figure5(sheet, out / "grid.png", per_row=per_row, suptitle=f"η={thr:g}"))
    return pngs, failed
