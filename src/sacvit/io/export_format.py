"""The ONNX export format that ``sacvit export`` writes and :mod:`sacvit.runtime` reads.

An export folder holds two graphs and one manifest: ``ee.onnx`` (image → the EE stage's outputs
:data:`EE_OUTPUTS`), ``sac.onnx`` (:data:`SAC_INPUTS` → logits) and ``sacvit.json`` (format,
model name, SAC configuration, geometry, class names, preprocessing, calibration record).
"""

from __future__ import annotations

import importlib

__all__ = ["EE_FILE", "SAC_FILE", "META_FILE", "FORMAT", "EE_OUTPUTS", "SAC_INPUTS", "MissingExtraError", "require"]

FORMAT = "sacvit-onnx/1"
EE_FILE, SAC_FILE, META_FILE = "ee.onnx", "sac.onnx", "sacvit.json"
EE_OUTPUTS = ("logits", "confidence", "gca", "window", "tokens", "embed")
SAC_INPUTS = ("image", "tokens", "embed", "gca", "window")


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is missing (an ``ImportError`` and, for the CLI, a ``ValueError``)."""


def require(*modules: str) -> None:
    """``MissingExtraError`` naming the ``sacvit[onnx]`` extra unless every module imports."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise MissingExtraError(f"{name} is not installed ({err}): pip install 'sacvit[onnx]'") from None


