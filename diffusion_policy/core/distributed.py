"""The process group a training run belongs to: PyTorch's own `torch.distributed`, launched by `torchrun`.

A plain `python` run is a group of one (rank 0 of world size 1) and needs no process group.
Under `torchrun --nproc_per_node=N` every process reads its `RANK`, `WORLD_SIZE` and `LOCAL_RANK`
from the environment torchrun sets, and `init_distributed` joins the group: `gloo` on CPU, `nccl`
on CUDA (one GPU per local rank), unless a backend is named.
"""

from __future__ import annotations

import datetime
import io
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: `rank` of `world_size` processes, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs metrics and evaluates."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or any launcher that sets `WORLD_SIZE`)."""
    return "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 (or no launcher): the process that writes outside the trainer (configs, samples, prints)."""
    return int(os.environ.get("RANK", "0")) == 0


def restart_count() -> int:
    """How many times torchrun has restarted this job's workers (`--max-restarts`); 0 otherwise."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_distributed(device: torch.device, backend: str = "auto", timeout_s: float = 300.0) -> DistributedContext:
    """Join the process group torchrun set up; a world of one when the process was not launched by it.

    `backend`: `auto` (`nccl` for a CUDA device, `gloo` otherwise), `gloo` or `nccl`. `timeout_s`
    bounds every collective, so a rank that stops answering ends the job instead of hanging it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"distributed backend={backend!r} is not one of {BACKENDS}")
    if not launched_by_torchrun():
        return DistributedContext()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"distributed backend='nccl' needs a CUDA device, the run trains on {device}")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank, world_size, local_rank)


def rank_device(device: torch.device, context: DistributedContext) -> torch.device:
    """The device of this rank: on CUDA `cuda:<local_rank>` (one GPU per process), else `device`."""
    if device.type == "cuda" and context.enabled:
        return torch.device("cuda", context.local_rank)
    return device


def gather_to_main(value: Any, context: DistributedContext) -> list[Any] | None:
    """Every rank's `value` in rank order on rank 0 (None on the others); `[value]` in a world of one."""
    if not context.enabled:
        return [value]
    buffer = io.BytesIO()
    torch.save(value, buffer)  # tensors inside `value` (RNG states) travel as torch serialises them
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(buffer.getvalue(), gathered, dst=0)
    if gathered is None:
        return None
    return [torch.load(io.BytesIO(payload), weights_only=False) for payload in gathered]  # our own ranks


def broadcast_from_main(value: Any, context: DistributedContext) -> Any:
    """Rank 0's `value` on every rank (`value` itself in a world of one)."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (every rank, at the end of training), together: the barrier keeps a rank
    from tearing down its connections while another still uses them (seen as a gloo abort at exit)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
