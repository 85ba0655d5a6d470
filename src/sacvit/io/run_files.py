"""The file names of a training run folder ``OUT``, spelled once (no torch: ``sacvit --help`` reads them).

``OUT/checkpoints/`` (the training checkpoints) is described in :mod:`sacvit.io.train_state`.
"""

__all__ = ["CHECKPOINT", "BEST", "METRICS", "STEPS"]

#: The deployed weights, as of the last epoch end: ``OUT/last.safetensors``.
CHECKPOINT = "last.safetensors"
#: The weights of the epoch with the highest validation score so far (ties keep the earlier
#: epoch): ``OUT/best.safetensors``.
BEST = "best.safetensors"
#: One JSON line per epoch: ``OUT/metrics.jsonl``.
METRICS = "metrics.jsonl"
#: One JSON line per logged optimizer step: ``OUT/steps.jsonl``.
STEPS = "steps.jsonl"
