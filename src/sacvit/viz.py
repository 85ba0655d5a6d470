"""Figure-5 style overlays: where SAC-ViT spends its full-resolution compute.

For each image, the target window chosen by semantic-aware clustering is drawn as a box and the
non-target region is shaded; the title gives the EE confidence, the stage the image ended in and
the predicted / true class. Images that left at the early exit are marked ``exit @ EE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["plot_clusters"]


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
    confidence = model.forward_ee(x, need_gca=False).logits.softmax(-1).amax(-1).cpu()
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
    eta = model.sac_cfg.threshold if threshold is None else threshold
    fig.suptitle(f"target window (box) and non-target region (shaded), η={eta:g}", fontsize=9)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
