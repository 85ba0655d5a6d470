"""Tiny checkpoints and generated image files for the deployment tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import sacvit  # noqa: F401  (registers the timm variants)
from sacvit.data.preprocess import preprocess_for
from sacvit.io.checkpoint import CheckpointMeta, save_checkpoint

NAME = "sacvit_demo_patch8_112"
KW = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=4)
SAC = dict(window=3, gca_start=1)
CLASSES = ["level-0", "level-1", "level-2", "level-3"]


def tiny_sacvit(head_scale: float = 25.0, **sac) -> torch.nn.Module:
    """A 32-px SAC-ViT with random weights, a non-zero reuse MLP, and a head scaled up so that the
    EE confidences spread over (0, 1) (some images exit at η = 0.5, others do not)."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, **KW, sac={**SAC, **sac})
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
        torch.nn.init.normal_(model.reuse.mlp.fc2.weight, std=0.02)
    return model.eval()


def save_tiny(path: Path, model: torch.nn.Module | None = None, data: str = "synthetic") -> Path:
    """A checkpoint of :func:`tiny_sacvit` with the synthetic data's preprocessing."""
    model = model if model is not None else tiny_sacvit()
    return save_checkpoint(path, model, CheckpointMeta(model_name=NAME, model_kwargs=KW, sac_config=model.sac_config,
                                                class_names=CLASSES, epoch=1,
                                                preprocess=preprocess_for(data, 32).to_dict()))


def image_files(folder: Path) -> dict[str, Path]:
    """Image files of every kind a user has, plus broken ones: name → path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    files = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        files[name] = folder / name
        img.save(files[name], **kw)

    save("rgb.png", Image.fromarray(rgb))
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    save("palette.gif", Image.fromarray(rgb).convert("P"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("gray16.png", Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)))
    save("photo.jpg", Image.fromarray(rgb), quality=90)
    data = files["photo.jpg"].read_bytes()
    files["truncated.jpg"] = folder / "truncated.jpg"
    files["truncated.jpg"].write_bytes(data[: len(data) // 2])
    files["notes.jpg"] = folder / "notes.jpg"
    files["notes.jpg"].write_text("not an image\n")
    return files
