"""`Comm`: a rank's view of its worker's process group (NCCL on cuda, gloo on the CPU).

The model calls `all_reduce` once after each row-parallel projection (attention o_proj, DeltaNet
out_proj, MLP / MoE down projections), `all_reduce` for the vocab-parallel embedding and
`all_gather_last` for the vocab-parallel lm head. With one rank every call returns its input.
The counters make the cost visible (bench.decode --tp).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(eq=False)
class Comm:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # where broadcast step metadata lives (the GPU under NCCL)
    # In a process group (init_comm). An active group of one rank runs the whole TP code path
    # (collectives over one rank), which is how one GPU tests it under NCCL and CUDA graphs.
    active: bool = False
    all_reduces: int = 0
    all_gathers: int = 0
    broadcasts: int = 0
    seconds: float = 0.0  # wall time inside collectives (synchronous on the CPU)
    _timed: bool = field(default=True, repr=False)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def splits(self, parallel_degree: int) -> bool:
        """Whether a part split `parallel_degree` ways runs the split path with its collectives:
        when it is really split, or in an active group of one rank (the TP path over one rank)."""
        return parallel_degree > 1 or (self.active and self.world_size == 1)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        started = time.perf_counter()
        dist.all_reduce(x)
        self.all_reduces += 1
        self.seconds += time.perf_counter() - started
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` along the last dim, in rank order."""
        if not self.active:
            return x
        started = time.perf_counter()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        self.all_gathers += 1
        self.seconds += time.perf_counter() - started
        return torch.cat(parts, dim=-1)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's `x` into every rank's `x` (same shape and dtype everywhere)."""
        if not self.active:
            return x
        started = time.perf_counter()
        dist.broadcast(x, src=0)
        self.broadcasts += 1
        self.seconds += time.perf_counter() - started
        return x

    def reset_counters(self) -> None:
        self.all_reduces = self.all_gathers = self.broadcasts = 0
        self.seconds = 0.0


SINGLE = Comm()  # the default: one rank, no process group


def init_comm(
    rank: int,
    world_size: int,
    device: str | torch.device,
    init_method: str | None = None,
    timeout_s: float = 300.0,
) -> Comm:
    """Join the worker's process group (NCCL for cuda devices, gloo otherwise) and return its Comm.
    `init_method` defaults to env:// (MASTER_ADDR / MASTER_PORT). A collective that waits longer
    than `timeout_s` (a dead rank) raises instead of hanging: the worker fails as a whole."""
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if not dist.is_initialized():
        if init_method is None:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            init_method = "env://"
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    comm_device = str(torch.device(device)) if backend == "nccl" else "cpu"
    return Comm(rank=rank, world_size=world_size, device=comm_device, active=True)


def close_comm() -> None:
    """Leave the process group (tests start several in one process, one after another)."""
    if dist.is_initialized():
        dist.destroy_process_group()
