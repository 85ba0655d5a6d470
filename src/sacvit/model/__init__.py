"""SAC-ViT model: the two-stage network, its clustering geometry, the DVT cascade and the timm registrations."""

from .dvt import DVT
from .registry import load_backbone_weights, read_state_dict
from .sacvit import EEOutput, Prediction, SACViT

__all__ = ["SACViT", "DVT", "EEOutput", "Prediction", "load_backbone_weights", "read_state_dict"]
