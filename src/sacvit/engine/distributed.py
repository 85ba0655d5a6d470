"""Process setup for training: one process, or one of several under ``torchrun`` (DDP).

Under ``torchrun`` with ``WORLD_SIZE > 1`` the process group uses NCCL on GPUs and gloo on CPUs,
and survives ``torchrun --max-restarts`` (each restart attempt meets under its own store prefix).
Also here: the all-reduced mean of a scalar, and the RNG states that a bit-identical resume needs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..devices import resolve_device

__all__ = ["Dist", "setup", "teardown", "all_mean", "rng_state", "set_rng_state", "seed_everything"]


@dataclass
class Dist:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    local_world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", threads: int | None = None) -> Dist:
    """Read ``torchrun``'s environment, pick the device and threads, start the process group.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        threads: CPU threads of this process (default: ``OMP_NUM_THREADS``, else the cores
            shared among the local processes).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device, index=local_rank)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
    if threads:
        torch.set_num_threads(threads)
    elif not cuda and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, local_world)))
    if world > 1 and not dist.is_initialized():
        # After a torchrun restart the agent's store still holds the keys of the dead workers
        # (their gloo/NCCL addresses): a new worker could read those and connect to nobody. Keys
        # under a per-attempt prefix make each attempt meet only its own processes.
        store, _, _ = next(dist.rendezvous("env://", rank, world))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore(f"sacvit/attempt_{attempt}", store),
                                rank=rank, world_size=world)
    return Dist(rank, world, local_world, dev)


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: Tensor, d: Dist) -> float:
    """The mean of a scalar tensor over all processes (a host sync)."""
    value = value.detach().double().clone()
    if d.world > 1:
        dist.all_reduce(value)
        value /= d.world
    return float(value)


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as tensors and plain values (``weights_only``-loadable)."""
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
