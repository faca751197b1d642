"""The process group of a multi-process training run (``torchrun --nproc_per_node N -m nbsrc train ...``, or
`nbsrc.launch` from a notebook), and the collectives the trainer uses. Every process trains on its own shard of the
data; only rank 0 logs, tracks and writes checkpoints.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# The other ranks wait at a barrier while rank 0 validates on the whole split and writes checkpoints: a large
# validation set can take longer than the default 10 minutes of a collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)

__all__ = ["DistInfo", "any_rank", "barrier", "broadcast_object", "cleanup", "init_distributed", "is_distributed"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def is_distributed() -> bool:
    """True when a process group is running."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device | str = "cpu") -> DistInfo:
    """Join the process group of the ``torchrun`` environment (no-op for a single process): NCCL and
    ``cuda:LOCAL_RANK`` on CUDA, gloo elsewhere. Non-zero ranks then log warnings and errors only."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)
    if world_size <= 1:
        return info
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} outside WORLD_SIZE={world_size}")
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(local_rank)
    if not is_distributed():
        backend = "nccl" if on_cuda else "gloo"
        dist.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT
        )
        logger.info("process group: rank %d of %d (%s)", rank, world_size, backend)
    if rank != 0:
        logging.getLogger("nbsrc").setLevel(logging.WARNING)
    return info


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether `flag` holds on any rank; every rank must call it (how all ranks agree to skip a step whose batch
    one of them could not load). `device` is where the collective runs (CUDA under NCCL)."""
    if not is_distributed():
        return flag
    box = torch.tensor([int(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
