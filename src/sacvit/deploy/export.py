"""``sacvit export``: a trained SAC-ViT as two ONNX graphs and a JSON that describes them.

The folder holds

* ``ee.onnx`` — :class:`~sacvit.model.stages.EEStage`: ``image → logits, confidence, gca, window,
  tokens, embed``;
* ``sac.onnx`` — :class:`~sacvit.model.stages.SACStage`: ``image, tokens, embed, gca, window →
  logits``;
* ``sacvit.json`` — format, model name, SAC-ViT configuration (η), stage geometry and GMACs,
  class names, preprocessing, and the tensor names of both graphs.

Both graphs have a dynamic batch axis and static token counts (window mode); the exit decision
and the batch compaction between them run on the host (:class:`~sacvit.runtime.OnnxSACViT`). The
graphs are made with ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``: the
``sacvit[onnx]`` extra); each graph carries its own copy of the shared weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.evaluate import SAC_ONLY
from ..io.export_format import EE_FILE, EE_OUTPUTS, FORMAT, META_FILE, SAC_FILE, SAC_INPUTS, require
from ..model.stages import EEStage, SACStage, check_stageable, geometry
from .pretrained import Pretrained

__all__ = ["check_export", "export_onnx", "export_plain"]

def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names: tuple[str, ...],
            output_names: tuple[str, ...], opset: int | None) -> None:
    """One graph with a dynamic batch axis on every input; exporter chatter is silenced."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_shapes=tuple({0: batch} for _ in args), dynamo=True, external_data=False,
                          opset_version=opset)


def export_onnx(model: nn.Module | Pretrained, out_dir: str | Path, *, class_names: list[str] | None = None,
                preprocess: dict[str, Any] | None = None, model_name: str | None = None,
                opset: int | None = None) -> Path:
    """Write ``ee.onnx``, ``sac.onnx`` and ``sacvit.json`` for a window-mode SAC-ViT.

    Args:
        model: the SAC-ViT, or a :class:`~sacvit.deploy.pretrained.Pretrained` (``from_pretrained``)
            whose class names, preprocessing and calibration record are used by default.
        out_dir: output folder (created).
        class_names, preprocess, model_name: override what the model carries.
        opset: ONNX opset (default: the exporter's).

    Returns:
        The path of ``sacvit.json``.

    Raises:
        ValueError: a model without a static two-graph form (adaptive clustering, random window).
        MissingExtraError: onnx/onnxscript are not installed.
    """
    meta = model.meta if isinstance(model, Pretrained) else None
    if isinstance(model, Pretrained):
        class_names = class_names if class_names is not None else list(model.class_names)
        preprocess = preprocess if preprocess is not None else model.preprocess
        model = model.model
    check_stageable(model)
    require("onnx", "onnxscript")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    param = next(model.parameters())
    geo = geometry(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, geo.in_chans, *geo.img_size, generator=g).to(param.device, param.dtype)
    ee, sac = EEStage(model), SACStage(model)
    with torch.no_grad():
        _, _, gca, window, tokens, embed = ee(x)
        _export(ee, (x,), out / EE_FILE, ("image",), EE_OUTPUTS, opset)
        _export(sac, (x, tokens, embed, gca, window), out / SAC_FILE, SAC_INPUTS, ("logits",), opset)
    names, pre = class_names, preprocess
    info = {
        "format": FORMAT,
        "model_name": model_name or (meta.model_name if meta else type(model).__name__),
        "sac_config": model.sac_config.to_dict(),
        "geometry": geo.to_dict(),
        "class_names": list(names) if names is not None else [str(i) for i in range(model.num_classes)],
        "preprocess": pre.to_dict() if hasattr(pre, "to_dict") else pre,
        "calibration": meta.calibration if meta else None,
        "graphs": {"ee": {"file": EE_FILE, "inputs": ["image"], "outputs": list(EE_OUTPUTS)},
                   "sac": {"file": SAC_FILE, "inputs": list(SAC_INPUTS), "outputs": ["logits"]}},
        "torch": torch.__version__,
    }
    path = out / META_FILE
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def export_plain(model: nn.Module, path: str | Path, opset: int | None = None) -> Path:
    """A plain classifier (e.g. the DeiT baseline) as one ONNX graph ``image → logits``."""
    require("onnx", "onnxscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pe = model.patch_embed
    param = next(model.parameters())
    x = torch.randn(2, pe.proj.in_channels, *pe.img_size).to(param.device, param.dtype)
    with torch.no_grad():
        _export(model.eval(), (x,), path, ("image",), ("logits",), opset)
    return path


def check_export(model: nn.Module | Pretrained, out_dir: str | Path, batch: int = 4, tolerance: float = 1e-4) -> str:
    """Run the export in onnxruntime next to ``model`` on random images at η = 0 and η > 1.

    Returns:
        A one-line summary (largest logit difference per threshold).

    Raises:
        ValueError: logits differ by more than ``tolerance`` or stages differ.
    """
    from ..runtime import OnnxSACViT  # onnxruntime is optional

    model = model.model if isinstance(model, Pretrained) else model
    runtime = OnnxSACViT(out_dir)
    geo = runtime.geometry
    param = next(model.parameters())
    x = torch.randn(batch, geo.in_chans, *geo.img_size, generator=torch.Generator().manual_seed(1))
    parts = []
    for thr in (0.0, SAC_ONLY):
        ref = model.predict(x.to(param.device, param.dtype), thr)
        got = runtime.predict(x, thr)
        diff = float((ref.logits.float().cpu() - got.logits).abs().max())
        if diff > tolerance or not torch.equal(ref.stage.cpu(), got.stage) or not torch.equal(ref.box.cpu(), got.box):
            raise ValueError(f"the ONNX export of {out_dir} disagrees with PyTorch at η={thr:g} (max |Δlogit| "
                             f"{diff:.3g}); please report this with your model configuration")
        parts.append(f"η={thr:g}: max |Δlogit| {diff:.2e}")
    return "onnxruntime matches PyTorch on random images (" + ", ".join(parts) + ")"
