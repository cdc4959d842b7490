"""A whole Baton on one machine: router + N prefill + M decode workers as local processes (or Ray
actors), in-memory index by default. What `baton demo`, the end-to-end tests and the serving
benchmarks start."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from router.config import RouterConfig
from router.pools.base import WorkerSpec
from router.server import RunningRouter, start_router

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    model: str
    prefill: int = 1
    decode: int = 1
    transfer: str = "tcp"
    index: str = "embedded"
    pool: str = "process"  # "process" | "ray"
    ray_address: str | None = None
    memory_gb: float = 1.0
    worker_args: tuple[str, ...] = ()
    router: RouterConfig | None = None
    # Ray: GPUs each worker actor asks for (None: 1 when the cluster has GPUs). A fraction lets a
    # prefill and a decode actor share one GPU (`baton serve` uses --gpu-memory-utilization).
    gpus_per_worker: float | None = None


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.pool = None
        self.router: RunningRouter | None = None

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        spec = self.spec
        worker_spec = WorkerSpec(
            model=spec.model, transfer=spec.transfer, index=spec.index, memory_gb=spec.memory_gb, extra_args=spec.worker_args
        )
        if spec.pool == "ray":
            from router.pools.ray_pool import RayPool

            self.pool = RayPool(worker_spec, address=spec.ray_address, num_gpus_per_worker=spec.gpus_per_worker)
        else:
            from router.pools.process import ProcessPool

            self.pool = ProcessPool(worker_spec)
        self.pool.start(spec.prefill, spec.decode)
        config = spec.router or RouterConfig(model=spec.model, listen="127.0.0.1:0", index=spec.index)
        config = dataclasses.replace(config, model=spec.model, index=spec.index)
        self.router = start_router(config, self.pool)
        self.router.core.registry.wait_until_ready(spec.prefill, spec.decode)

    @property
    def address(self) -> str:
        return self.router.address

    @property
    def admin_address(self) -> str:
        return self.router.admin_address

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
            self.router = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
