"""Run an exported SAC-ViT (``sacvit export``) with onnxruntime, outside PyTorch's autograd and modules.

:class:`OnnxSACViT` loads the two graphs of an export folder and runs them with the exit decision
and batch compaction on the host (:func:`~sacvit.model.stages.staged_predict`, the same code the
compiled PyTorch path uses), so ``predict(x, threshold)`` returns what
:meth:`SACViT.predict <sacvit.model.sacvit.SACViT.predict>` returns: logits, stage, GMACs, box,
confidence. Tensors cross to onnxruntime as NumPy views (no copy). :class:`OnnxClassifier` runs a
plain one-graph classifier (the DeiT baseline of ``sacvit bench --runtime ort``).

Needs the ``sacvit[onnx]`` extra (``onnxruntime``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import SACConfig
from .data.preprocess import Preprocess
from .io.export_format import EE_OUTPUTS, FORMAT, META_FILE, require
from .model.outputs import Prediction
from .model.stages import StageGeometry, staged_predict

__all__ = ["OnnxSACViT", "OnnxClassifier", "session"]


def session(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
            spinning: bool = True):
    """An onnxruntime ``InferenceSession`` with ``threads`` intra-op threads (default: onnxruntime's).

    ``spinning=False`` stops the session's idle threads from busy-waiting after a run: two sessions
    run back to back (SAC-ViT's EE and SAC graphs) otherwise fight over the cores — at batch 1 on
    2 threads the SAC path took 76 ms with spinning and 44 ms without (EE alone 11, SAC alone 24).
    """
    require("onnxruntime")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
        raise ValueError(f"cannot load ONNX graph {path}: {err}") from err


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


class OnnxSACViT:
    """An exported SAC-ViT on onnxruntime.

    Args:
        path: a folder written by ``sacvit export`` (or its ``sacvit.json``).
        threads: intra-op threads of each session (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default: CPU).

    Attributes:
        sac_config: the SAC-ViT configuration (``sac_config.threshold`` is the default η).
        class_names: class names, index = class id.
        preprocess: the evaluation :class:`~sacvit.data.preprocess.Preprocess` (or ``None``).
        geometry: the :class:`~sacvit.model.stages.StageGeometry` (shapes, window, GMACs per stage).
        meta: the whole ``sacvit.json``.

    Raises:
        ValueError: not an export folder, or a graph onnxruntime cannot load.
        MissingExtraError: onnxruntime is not installed.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        path = Path(path)
        folder = path.parent if path.name == META_FILE else path
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ValueError(f"{folder} is not a sacvit ONNX export (no {META_FILE}; write one with sacvit export)")
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except ValueError as err:
            raise ValueError(f"{meta_path}: not valid JSON ({err})") from err
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: not a '{FORMAT}' export (format {meta.get('format')!r})")
        self.meta = meta
        self.sac_config = SACConfig.from_dict(meta["sac_config"])
        self.class_names = tuple(meta["class_names"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else None
        self.geometry = StageGeometry.from_dict(meta["geometry"])
        graphs = meta["graphs"]
        self.ee = session(folder / graphs["ee"]["file"], threads, providers, spinning=False)
        self.sac = session(folder / graphs["sac"]["file"], threads, providers, spinning=False)
        self._sac_inputs = [i.name for i in self.sac.get_inputs()]  # the exporter drops unused inputs

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _run_ee(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in self.ee.run(list(EE_OUTPUTS), {"image": _numpy(x)}))

    def _run_sac(self, x: Tensor, tokens: Tensor, embed: Tensor, gca: Tensor, window: Tensor) -> Tensor:
        given = {"image": x, "tokens": tokens, "embed": embed, "gca": gca, "window": window}
        feed = {name: _numpy(given[name]) for name in self._sac_inputs}
        return torch.from_numpy(self.sac.run(["logits"], feed)[0])

    @property
    def threshold(self) -> float:
        """The default exit threshold η (the calibrated one, when the checkpoint was calibrated)."""
        return self.sac_config.threshold

    def predict(self, x: Tensor | np.ndarray, threshold: float | None = None) -> Prediction:
        """As :meth:`SACViT.predict`: images whose EE confidence is ≥ η exit, the rest go through SAC.

        Args:
            x: ``(B, C, H, W)`` float32 images (a tensor on any device, or a NumPy array).
            threshold: exit threshold η (default: ``sac_config.threshold``).

        Returns:
            A :class:`~sacvit.model.outputs.Prediction` of CPU tensors.
        """
        x = torch.as_tensor(x).detach().cpu().float()
        thr = self.sac_config.threshold if threshold is None else float(threshold)
        return staged_predict(self._run_ee, self._run_sac, x, thr, self.geometry)

    def __call__(self, x: Tensor | np.ndarray) -> Tensor:
        """Logits at the default threshold."""
        return self.predict(x).logits


class OnnxClassifier:
    """A one-graph ``image → logits`` classifier on onnxruntime (e.g. from ``export_plain``)."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        self.session = session(path, threads, providers)

    def __call__(self, x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x).detach().cpu().float()
        return torch.from_numpy(self.session.run(["logits"], {"image": _numpy(x)})[0])
