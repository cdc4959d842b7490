"""A worker of N ranks: this process is rank 0 (gRPC, scheduling); ranks 1..N-1 are processes it
starts on this machine (one per device: rank r on cuda:r, or the CPU under gloo). The router sees
one address. Ranks fail together: a rank that dies takes the whole worker down (this process
exits), so the router fails over as for any dead worker and no stream waits on a half worker.
"""

from __future__ import annotations

import logging
import os
import threading

import torch.distributed as dist

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.parallel.comm import init_comm
from engine.parallel.ranks import free_port, init_method_for, spawn_followers

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.2
RANK_DIED_EXIT_CODE = 70


class RankGroup:
    """The follower processes of this worker and the watch that fails the worker when one dies."""

    def __init__(self, procs) -> None:
        self.procs = procs
        self.stopping = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="rank-watch").start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            for rank, proc in enumerate(self.procs, start=1):
                proc.join(WATCH_INTERVAL_S / len(self.procs))
                if proc.exitcode is not None and not self.stopping.is_set():
                    log.error("rank %d exited with %s: the worker stops as a whole", rank, proc.exitcode)
                    os._exit(RANK_DIED_EXIT_CODE)

    def stop(self, engine: LLMEngine) -> None:
        """After the engine loop has stopped: the followers leave their step loop and exit."""
        self.stopping.set()
        engine.stop_followers()
        for proc in self.procs:
            proc.join(10)
            if proc.exitcode is None:
                proc.kill()
        if dist.is_initialized():  # the process's default group: free for a worker started after this one
            dist.destroy_process_group()


def start_ranks(model: str, config: EngineConfig, on_kv_event, hooks_factory=None) -> tuple[LLMEngine, RankGroup]:
    """Start the follower ranks, join the group as rank 0 and build the (leader) engine.
    `hooks_factory` builds each follower's hooks (the worker's transfers on that rank)."""
    port = free_port()
    group = RankGroup(spawn_followers(model, config, port, hooks_factory))
    comm = init_comm(0, config.parallel.world_size, config.device, init_method_for(port))
    return LLMEngine(model, config, on_kv_event=on_kv_event, comm=comm), group
