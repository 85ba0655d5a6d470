"""sacvit — SAC-ViT: Semantic-Aware Clustering Vision Transformer with Early Exit, on timm.

Importing the package registers the ``sacvit_*`` variants with timm::

    import sacvit, timm
    model = timm.create_model("sacvit_deit_small_patch16_224", checkpoint="deit_small.pth")
    pred = model.eval().predict(images, threshold=0.76)

A trained checkpoint rebuilds itself, with its class names, calibrated η and preprocessing::

    model = sacvit.from_pretrained("runs/demo/sacvit/last.safetensors")
"""

import timm

from .config import SACConfig
from .deploy.pretrained import from_pretrained
from .engine.calibrate import calibrate
from .engine.loss import sac_loss
from .model import Prediction, SACViT, load_backbone_weights

__version__ = "0.1.0"


def create_model(name: str, checkpoint: str | None = None, **kwargs):
    """``timm.create_model`` for a registered name, with an optional local ``checkpoint`` file."""
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    return timm.create_model(name, **kwargs)


__all__ = ["SACConfig", "SACViT", "Prediction", "load_backbone_weights", "create_model", "from_pretrained",
           "calibrate", "sac_loss", "__version__"]
