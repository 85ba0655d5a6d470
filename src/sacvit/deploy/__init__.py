"""Using a trained SAC-ViT: rebuild it from its checkpoint, predict image files, visualise what it
chose, export it to ONNX (run it with :mod:`sacvit.runtime`)."""

from .export import export_onnx, export_plain
from .predict import Result, find_images, predict_files
from .pretrained import from_pretrained, load_predictor

__all__ = ["Result", "export_onnx", "export_plain", "find_images", "from_pretrained", "load_predictor",
           "predict_files"]
