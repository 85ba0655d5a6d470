"""``sacvit bench``: wall-clock throughput and latency of SAC-ViT against DeiT, ToMe and EViT.

* :mod:`.timing`  — the timing loop (also used by ``sacvit eval``);
* :mod:`.twins`   — the plain-ViT twins and the forced-exit threshold;
* :mod:`.rows`    — what is timed and the derived columns;
* :mod:`.profile` — the per-part split of ``predict``;
* :mod:`.run`     — the whole benchmark (:class:`BenchConfig`, :func:`run`); the command line is
  :mod:`sacvit.cli.bench`.
"""

from .profile import PART_NAMES, PartsProfile, profile_ops, profile_parts
from .rows import COLUMNS, Row
from .run import METHODS, BenchConfig, run
from ..engine.timing import percentile, throughput, time_calls
from .twins import exit_threshold, plain_twin

__all__ = ["BenchConfig", "COLUMNS", "METHODS", "PART_NAMES", "PartsProfile", "Row", "exit_threshold",
           "percentile", "plain_twin", "profile_ops", "profile_parts", "run", "throughput", "time_calls"]
