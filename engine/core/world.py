"""The process group this process is in, seen by code of any layer: its rank and size, rank 0's value of
an object, a barrier. Outside a process group (one process) each is the one-process answer, so the same
code runs alone and under a launcher (forming the group: engine.runtime.launch)."""
from __future__ import annotations

import torch


def world() -> tuple[int, int]:
    """(rank, world size) of the process group this process is in, (0, 1) outside one."""
    import torch.distributed as dist
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def from_rank0(obj):
    """Rank 0's `obj` on every rank (`obj` itself outside a process group)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    if world()[1] > 1:
        torch.distributed.barrier()
