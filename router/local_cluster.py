"""A whole Baton on one machine: router + N prefill + M decode workers as local processes (or Ray
actors), in-memory index by default. What `baton demo`, the end-to-end tests and the serving
benchmarks start."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass, field

from router.config import RouterConfig
from router.pools.base import WorkerSpec
from router.pools.process import ProcessPool
from router.server import RunningRouter, bind_router, start_router
from rpc.cluster_auth import ClusterCredential

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
    prefill_args: tuple[str, ...] = ()  # one role's flags (after worker_args), e.g. its --tp
    decode_args: tuple[str, ...] = ()
    router: RouterConfig | None = None
    router_model: str | None = None  # the router's copy of the checkpoint, if not `model`
    startup_timeout_s: float = 180.0  # per worker: model load + gRPC health SERVING
    # Ray: GPUs each worker actor asks for (None: 1 when the cluster has GPUs). A fraction lets a
    # prefill and a decode actor share one GPU (`baton serve` uses --gpu-memory-utilization).
    gpus_per_worker: float | None = None
    gpus_per_role: dict[str, float] = field(default_factory=dict)  # Ray: overrides per role (multi-rank workers)


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
        """Bind every router port first (a taken port fails here, before any worker starts), then
        start the workers, then serve."""
        spec = self.spec
        config = spec.router or RouterConfig(model=spec.model, listen="127.0.0.1:0", index=spec.index)
        cluster = _cluster_credential(config)
        config = dataclasses.replace(config, model=spec.router_model or spec.model, index=spec.index, cluster=cluster)
        listeners = bind_router(config)
        try:
            self.pool = self._make_pool(cluster)
            self.pool.start(spec.prefill, spec.decode)
            self.router = start_router(config, self.pool, listeners)
        except BaseException:
            listeners.close()
            raise
        self.router.core.registry.wait_until_ready(spec.prefill, spec.decode, timeout_s=spec.startup_timeout_s)

    def _make_pool(self, cluster: ClusterCredential):
        spec = self.spec
        worker_spec = WorkerSpec(
            model=spec.model, transfer=spec.transfer, index=spec.index, memory_gb=spec.memory_gb,
            extra_args=spec.worker_args, prefill_args=spec.prefill_args, decode_args=spec.decode_args,
            cluster_token=cluster.token,
        )  # fmt: skip
        timeout = spec.startup_timeout_s
        if spec.pool == "ray":
            from router.pools.ray_pool import RayPool  # optional: ray, only for --pool ray

            return RayPool(
                worker_spec, address=spec.ray_address, startup_timeout_s=timeout,
                num_gpus_per_worker=spec.gpus_per_worker, num_gpus_per_role=spec.gpus_per_role,
            )  # fmt: skip
        return ProcessPool(worker_spec, startup_timeout_s=timeout)

    @property
    def cluster_token(self) -> str:
        """What the router sends the workers; tests acting as a cluster member use it."""
        return self.router.core.config.cluster.token if self.router else ""

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


def _cluster_credential(config: RouterConfig) -> ClusterCredential:
    """The router's token, else BATON_CLUSTER_TOKEN, else a fresh random one: the workers of a
    one-command cluster accept only their router (and each other) without any setup."""
    if config.cluster.token:
        return config.cluster
    from_env = ClusterCredential.from_env()
    if from_env.token:
        return from_env
    return dataclasses.replace(from_env, token=secrets.token_urlsafe(32))
