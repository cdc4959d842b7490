"""Starting a worker's ranks: rank 0 builds the `LLMEngine`; ranks > 0 run `run_follower`.

`run_follower` loads the rank's shard, allocates the cache with the sizes rank 0 broadcasts and
runs every step rank 0 broadcasts until STOP. `spawn_ranks` starts ranks 1..N-1 as processes of
this machine (tests, bench, `baton serve`); a worker of N GPUs starts one per device.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from engine.cache.tensors import CacheTensors
from engine.engine_config import EngineConfig
from engine.loader import load_checkpoint
from engine.model_config import parse_dtype
from engine.model_runner import ModelRunner
from engine.model_source import resolve_model
from engine.parallel.comm import Comm, close_comm, init_comm
from engine.parallel.spec_sync import SpecFollower
from engine.parallel.step_sync import FollowerHooks, follow

# Builds a follower's hooks in its process: (model_dir, config, rank) -> FollowerHooks.
# Picklable (a module-level function or a partial of one): it travels to the spawned process.
HooksFactory = Callable[[Path, EngineConfig, int], FollowerHooks]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_method_for(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def run_follower(
    model_dir: str | Path, config: EngineConfig, comm: Comm, hooks_factory: HooksFactory | None = None
) -> int:
    """A follower rank's whole life; returns the number of steps it ran."""
    model_dir = resolve_model(model_dir)
    dtype = parse_dtype(config.dtype) if config.dtype else None
    loaded = load_checkpoint(
        model_dir, dtype=dtype, device=config.device, parallel=config.parallel, comm=comm,
        fp8_compute=config.fp8_compute,
    )
    model = loaded.model
    cache_dtype = parse_dtype(config.dtype, loaded.config.dtype)

    def make_runner(num_pages: int, num_slots: int) -> ModelRunner:
        cache = CacheTensors.allocate(
            model.config, num_pages, num_slots, config.block_size, cache_dtype, config.device
        )
        return ModelRunner(model, cache)

    hooks = hooks_factory(model_dir, config, comm.rank) if hooks_factory else None
    with torch.inference_mode():
        return follow(comm, make_runner, SpecFollower(comm, model).handlers(), hooks)


def _follower_main(
    rank: int, world: int, port: int, model_dir: str, config: EngineConfig, hooks_factory: HooksFactory | None
) -> None:
    torch.set_num_threads(1)
    if torch.device(config.device).type == "cuda":  # one device per rank
        config = dataclasses.replace(config, device=f"cuda:{rank}")
    comm = init_comm(rank, world, config.device, init_method_for(port))
    try:
        run_follower(model_dir, config, comm, hooks_factory)
    finally:
        close_comm()
    # A clean STOP leaves without the interpreter's teardown: destroying torch.distributed's C++
    # threads during finalization sometimes aborted the rank ("terminate called without an active
    # exception", exit -6) after its work was done. A failure above still exits 1 with its traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_followers(
    model_dir: str | Path, config: EngineConfig, port: int, hooks_factory: HooksFactory | None = None
) -> list[mp.Process]:
    """Start ranks 1..world-1 (spawned processes) joining the group at 127.0.0.1:`port`;
    `hooks_factory` builds each one's `FollowerHooks` (calls and layer hooks: the worker's transfers)."""
    ctx = mp.get_context("spawn")
    world = config.parallel.world_size
    procs = []
    for rank in range(1, world):
        proc = ctx.Process(
            target=_follower_main, args=(rank, world, port, str(model_dir), config, hooks_factory), daemon=True
        )
        proc.start()
        procs.append(proc)
    return procs
