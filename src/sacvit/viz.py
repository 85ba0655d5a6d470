"""Figure-5 style overlays: where SAC-ViT spends its full-resolution compute.

* :func:`figure5` — per image the input, the EE global class attention as a heat map and the
  target window with the non-target tokens shaded, captioned with the EE and final predictions
  (``sacvit visualize``; :class:`Panel` holds what one row shows);
* :func:`plot_clusters` — a compact grid of windows over a batch (the demo's figure).

In :func:`plot_clusters`, for each image, the target window chosen by semantic-aware clustering is drawn as a box and the
non-target region is shaded; the title gives the EE confidence, the stage the image ended in and
the predicted / true class. Images that left at the early exit are marked ``exit @ EE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["DPI", "Panel", "figure5", "figure5_size", "plot_clusters"]


def _to_display(raw: Tensor | np.ndarray) -> np.ndarray:
    """A displayable ``(H, W)`` or ``(H, W, 3)`` array in [0, 1] from uint8/float, HW/CHW/HWC."""
    a = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else np.asarray(raw)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    a = a.astype(np.float32)
    if a.max() > 1.0:
        a = a / 255.0
    elif a.min() < 0.0:
        a = (a + 1.0) / 2.0  # normalised with mean/std 0.5
    return np.clip(a, 0.0, 1.0)


@torch.no_grad()
def plot_clusters(
    model: torch.nn.Module,
    images: Tensor,
    raw_images: Sequence[Tensor | np.ndarray] | Tensor | np.ndarray,
    out_png: str | Path,
    threshold: float | None = None,
    labels: Sequence[int] | Tensor | None = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 4,
) -> Path:
    """Draw the target window and shade the non-target region of each image.

    Args:
        model: a :class:`~sacvit.model.SACViT` (switched to eval mode).
        images: ``(B, 3, H, W)`` model inputs.
        raw_images: the same images for display (uint8 or float; ``HW``, ``CHW`` or ``HWC``).
        out_png: output file.
        threshold: exit threshold η (default: the model's configured one).
        labels: true classes, shown next to the prediction when given.
        class_names: class names (default: class indices).
        ncols: panels per row.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    model.eval()
    device = next(model.parameters()).device
    x = images.to(device)
    pred = model.predict(x, threshold)
    confidence = model.exit_confidence(model.forward_ee(x, need_gca=False).logits).cpu()
    classes = pred.logits.argmax(-1).cpu()
    stage, box = pred.stage.cpu(), pred.box.cpu()
    name = (lambda c: class_names[c]) if class_names is not None else str
    B = len(x)
    ncols = max(1, min(ncols, B))
    nrows = (B + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.8 * nrows), squeeze=False, layout="constrained")
    H, W = x.shape[-2:]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= B:
            continue
        img = _to_display(raw_images[i])
        sy, sx = img.shape[0] / H, img.shape[1] / W
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        if stage[i] == 1:
            x0, y0, x1, y1 = (float(v) for v in box[i])
            x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
            shade = np.ones((*img.shape[:2], 4), dtype=np.float32) * np.array([0.05, 0.05, 0.3, 0.55], dtype=np.float32)
            shade[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1)), 3] = 0.0
            ax.imshow(shade)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="orange", linewidth=2))
            where = "SAC"
        else:
            where = "exit @ EE"
        truth = f" / {name(int(labels[i]))}" if labels is not None else ""
        ok = labels is None or int(labels[i]) == int(classes[i])
        ax.set_title(f"EE {confidence[i]:.2f} · {where}\n{name(int(classes[i]))}{truth}", fontsize=8,
                     color="black" if ok else "red")
    eta = model.sac_config.threshold if threshold is None else threshold
    fig.suptitle(f"target window (box) and non-target region (shaded), η={eta:g}", fontsize=9)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@dataclass
class Panel:
    """What a Figure-5 row shows for one image.

    Attributes:
        image: ``(H, W)`` gray or ``(H, W, 3)`` display image in [0, 1] (the model's input view).
        gca: ``(h, w)`` global class attention of the EE tokens.
        target: ``(h, w)`` bool, the EE tokens of the target cluster.
        box: ``(x0, y0, x1, y1)`` target window in pixels of ``image``.
        ee: ``(class name, probability)`` of the EE stage.
        final: ``(class name, probability)`` of the stage the image ended in.
        exited: the image left at the early exit (the window was chosen but not used).
        title: a caption (e.g. the file name).
    """

    image: np.ndarray
    gca: np.ndarray
    target: np.ndarray
    box: tuple[int, int, int, int]
    ee: tuple[str, float]
    final: tuple[str, float]
    exited: bool
    title: str = ""


#: Size of one panel in inches and the resolution of :func:`figure5` (a row is 3 panels + a caption).
PANEL_IN, CAPTION_IN, DPI = 2.2, 0.62, 100


def figure5_size(n: int, per_row: int = 1) -> tuple[int, int]:
    """Pixel ``(width, height)`` of :func:`figure5` for ``n`` images, ``per_row`` images per row."""
    cols, rows = min(per_row, n), -(-n // per_row)
    return round(3 * PANEL_IN * cols * DPI), round((PANEL_IN + CAPTION_IN) * rows * DPI)


def figure5(panels: Sequence[Panel], out_png: str | Path, per_row: int = 1, suptitle: str | None = None) -> Path:
    """Figure-5 style rows: the input, the EE global class attention as a heat map, and the target
    window (box) with the non-target tokens shaded, captioned with the EE and final predictions.

    The PNG is exactly :func:`figure5_size` pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(panels)
    if n == 0:
        raise ValueError("nothing to draw")
    w, h = figure5_size(n, per_row)
    cols, rows = min(per_row, n), -(-n // per_row)
    fig = plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    row_h = 1.0 / rows
    for k, p in enumerate(panels):
        r, c = divmod(k, per_row)
        H, W = p.image.shape[:2]
        cmap = "gray" if p.image.ndim == 2 else None
        x0 = c / cols
        top = 1.0 - r * row_h
        panel_h = row_h * PANEL_IN / (PANEL_IN + CAPTION_IN)
        axes = [fig.add_axes((x0 + (j / 3 + 0.01) / cols, top - row_h + 0.02 * row_h, 0.98 / 3 / cols, panel_h * 0.96))
                for j in range(3)]
        for ax in axes:
            ax.imshow(p.image, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1].imshow(p.gca, cmap="inferno", alpha=0.6, extent=(0, W, H, 0), interpolation="bilinear")
        gh, gw = p.target.shape
        shade = np.zeros((gh, gw, 4), dtype=np.float32)
        shade[~p.target] = (0.05, 0.05, 0.3, 0.6)
        axes[2].imshow(shade, extent=(0, W, H, 0), interpolation="nearest")
        bx0, by0, bx1, by1 = p.box
        axes[2].add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, edgecolor="orange",
                                    linewidth=2, linestyle="--" if p.exited else "-"))
        axes[0].set_title("input", fontsize=8)
        axes[1].set_title("EE class attention", fontsize=8)
        axes[2].set_title("window (not used: exit)" if p.exited else "target window", fontsize=8)
        where = "exit @ EE" if p.exited else "SAC"
        caption = (f"{p.title}\nEE: {p.ee[0]} {p.ee[1]:.2f}   final ({where}): {p.final[0]} {p.final[1]:.2f}")
        fig.text(x0 + 0.5 / cols, top - 0.02 * row_h, caption, ha="center", va="top", fontsize=8)
    if suptitle:
        fig.text(0.995, 0.002, suptitle, ha="right", va="bottom", fontsize=6, color="0.4")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
