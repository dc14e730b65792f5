"""One process or many: torchrun's environment, the process group, samplers, reductions.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group uses NCCL on CUDA and gloo on
the CPU; each rank takes ``cuda:LOCAL_RANK`` when CUDA is present.  Training data is split
by :class:`~torch.utils.data.DistributedSampler`; validation by :class:`ShardSampler`,
which gives every image to exactly one rank (no padding duplicates), so summed counts are
exact.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Context:
    """Join torchrun's process group, if launched by torchrun; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, target)


def teardown(context: Context) -> None:
    """Leave the process group.  The barrier first: without it, gloo ranks that leave at
    different moments were seen to abort at exit ("terminate called without an active
    exception")."""
    if context.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sum_across(context: Context, values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64, so counts stay exact)."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64,
                          device=context.device if context.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(context: Context, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank; all ranks must call it."""
    if not context.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices rank, rank + world, rank + 2 world, ...: each index on exactly one rank."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
