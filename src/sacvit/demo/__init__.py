"""``sacvit demo``: fair evidence for SAC-ViT on the embedded data (see :mod:`.pipeline`)."""

from .config import PRESETS, DemoConfig, Preset, Recipe
from .pipeline import __doc__ as PIPELINE_DOC
from .pipeline import run_demo

__all__ = ["DemoConfig", "PRESETS", "Preset", "Recipe", "run_demo", "PIPELINE_DOC"]
