"""Rank 0 of a worker's group in the test process, the other ranks spawned as real followers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.parallel.comm import close_comm, init_comm
from engine.parallel.ranks import free_port, init_method_for, spawn_followers


@contextlib.contextmanager
def leader_engine(model_dir: str | Path, config: EngineConfig, hooks_factory=None) -> Iterator[LLMEngine]:
    """The rank-0 `LLMEngine` of a `config.parallel.world_size`-rank gloo group. On exit the followers
    are stopped and must have exited 0 (a rank that crashed, even after its work, fails the test)."""
    port = free_port()
    procs = spawn_followers(model_dir, config, port, hooks_factory)
    comm = init_comm(0, config.parallel.world_size, "cpu", init_method_for(port), timeout_s=120)
    try:
        engine = LLMEngine(model_dir, config, comm=comm)
        yield engine
        engine.stop_followers()
    finally:
        close_comm()
        for proc in procs:
            proc.join(60)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
