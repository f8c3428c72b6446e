"""Data-parallel training under ``torchrun``: one process per device, gradients averaged by DDP.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; with
``WORLD_SIZE`` > 1 :func:`setup` joins the process group (NCCL on CUDA, gloo on the CPU) and each
process takes its share of every step's samples. Without those variables training runs in one
process. Sums that make a step's loss (cross-entropy sums and counts) are added over processes with
:meth:`Distributed.sum`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from csm_core.errors import CsmError

__all__ = ["Distributed", "setup"]


@dataclass(frozen=True)
class Distributed:
    """This process's place: ``rank`` of ``world_size``, and the ``device`` it trains on."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """``values`` added element-wise over every process (float64)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise CsmError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def setup(device: str) -> Distributed:
    """Join the process group when ``WORLD_SIZE`` > 1. ``device`` is the resolved device of the run
    (``cpu``, ``cuda`` or ``cuda:N``); under torchrun on CUDA each process takes ``cuda:LOCAL_RANK``."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world <= 1:
        return Distributed(0, 1, device)
    if not 0 <= rank < world:
        raise CsmError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    if device.startswith("cuda"):
        device = f"cuda:{_env_int('LOCAL_RANK', 0)}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Distributed(rank, world, device)
