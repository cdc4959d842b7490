"""Worker pools: where the router's prefill and decode workers come from (see `base.Pool`)."""

from router.pools.base import (
    Pool,
    PoolCannotScale,
    PoolError,
    PoolMember,
    Role,
    WorkerSpec,
    WorkerStartError,
)
from router.pools.process import ProcessPool
from router.pools.static import StaticPool


def __getattr__(name: str):
    # RayPool lazily: importing ray costs seconds and ~100 MB, only `--pool ray` needs it.
    if name == "RayPool":
        from router.pools.ray_pool import RayPool  # optional: ray, only for --pool ray

        return RayPool
    raise AttributeError(name)


__all__ = [
    "Pool",
    "PoolCannotScale",
    "PoolError",
    "PoolMember",
    "ProcessPool",
    "RayPool",
    "Role",
    "StaticPool",
    "WorkerSpec",
    "WorkerStartError",
]
