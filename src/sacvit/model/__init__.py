"""SAC-ViT model: the two-stage network, its clustering geometry and its timm registrations."""

from .registry import load_backbone_weights, read_state_dict
from .sacvit import EEOutput, Prediction, SACViT

__all__ = ["SACViT", "EEOutput", "Prediction", "load_backbone_weights", "read_state_dict"]
