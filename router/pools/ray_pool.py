"""`RayPool`: each worker a Ray actor (`WorkerActor`) that runs its gRPC server in-process.

`RayPool(spec)` starts a local Ray cluster (or joins `address`). Placement by resources: every
actor asks for `num_cpus_per_worker` CPUs, one GPU when the cluster has GPUs, and one unit of the
custom resource named after its role (`{"prefill": 1}` / `{"decode": 1}`) when the cluster declares
it — that is how an operator pins roles to node groups. Ray restarts a dead actor up to
`max_restarts` times; the router sees the new address on its next poll.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from router.pools.base import PoolMember, Role, WorkerSpec, WorkerStartError
from router.pools.health import wait_until_serving
from router.pools.launching import LaunchingPool
from router.pools.ray_actor import DEFAULT_STARTER, WorkerActor
from rpc.tls import TlsConfig

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
ADDRESS_REFRESH_S = 1.0
# A local cluster's CPUs only gate placement; workers share the real cores as ProcessPool's do.
LOCAL_LOGICAL_CPUS = 16


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` or start a local cluster, unless Ray is up already. True if it started."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = num_cpus or max(os.cpu_count() or 1, LOCAL_LOGICAL_CPUS)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


@dataclass
class _Actor:
    worker_id: str
    role: Role
    handle: Any
    address: str = ""
    pending: Any = None  # an in-flight `address()` call
    refreshed_at: float = 0.0
    alive: bool = True

    def member(self) -> PoolMember:
        return PoolMember(self.address, self.role, self.worker_id)


class RayPool(LaunchingPool[_Actor]):
    def __init__(
        self,
        spec: WorkerSpec,
        address: str | None = None,
        *,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float | None = None,  # None: 1 when the cluster has GPUs
        num_gpus_per_role: dict[str, float] | None = None,  # e.g. {"decode": 2.0}: a worker of 2 ranks
        max_restarts: int = 3,
        starter: str = DEFAULT_STARTER,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.spec = spec
        self._started_ray = ensure_ray(address)
        self._remote_cluster = bool(address)
        self._actor_class = ray.remote(WorkerActor)
        resources = ray.cluster_resources()
        self._num_cpus = num_cpus_per_worker
        self._num_gpus = (
            num_gpus_per_worker if num_gpus_per_worker is not None else (1.0 if resources.get("GPU") else 0.0)
        )
        self._role_gpus = dict(num_gpus_per_role or {})
        self._role_resources = {role: role in resources for role in ("prefill", "decode")}
        self._max_restarts = max_restarts
        self._starter = starter
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s

    # ---- Pool ------------------------------------------------------------------------------------
    def members(self) -> list[PoolMember]:
        with self._lock:
            actors = list(self._workers.values())
            self._refresh_addresses(ray, actors)
            return [a.member() for a in actors if a.alive and a.address]

    # ---- extras ----------------------------------------------------------------------------------
    def actor(self, worker_id: str) -> Any:
        """The worker's Ray actor handle (chaos tests kill it: `ray.kill(handle, no_restart=False)`)."""
        return self._worker(worker_id).handle

    # ---- internals -------------------------------------------------------------------------------
    def _launch(self, role: Role) -> _Actor:
        worker_id = self._new_worker_id(role)
        listen = "0.0.0.0:0" if self._remote_cluster else "127.0.0.1:0"
        options: dict[str, Any] = {
            "num_cpus": self._num_cpus,
            "num_gpus": self._role_gpus.get(role, self._num_gpus),
            "max_restarts": self._max_restarts,
            "max_concurrency": 4,  # address() and info() answer while drain_and_stop runs
        }
        if self._role_resources[role]:
            options["resources"] = {role: 1}
        if self.spec.env():
            options["runtime_env"] = {"env_vars": self.spec.env()}
        handle = self._actor_class.options(**options).remote(
            role, self._worker_argv(worker_id, role, listen), self._starter, self._remote_cluster
        )
        return _Actor(worker_id, role, handle)

    def _worker_argv(self, worker_id: str, role: str, listen: str) -> list[str]:
        # Across nodes workers listen on every interface: without mutual TLS that is a choice the
        # operator made by using a remote cluster, so the worker is told (and warns).
        exposed = self._remote_cluster and not TlsConfig.from_env().mutual
        return self.spec.argv(worker_id, role=role, listen=listen, insecure=exposed)

    def _wait_ready(self, actor: _Actor) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        try:
            actor.address = ray.get(actor.handle.address.remote(), timeout=self._startup_timeout_s)
        except GetTimeoutError:
            raise WorkerStartError(
                f"Ray actor {actor.worker_id} not started in {self._startup_timeout_s:g} s "
                "(is there a node with the resources it asks for? large models: raise --startup-timeout)"
            ) from None
        except RayActorError as error:
            raise WorkerStartError(f"Ray actor {actor.worker_id} failed to start: {error}") from None
        actor.refreshed_at = time.monotonic()
        wait_until_serving(actor.address, max(1.0, deadline - time.monotonic()))

    def _refresh_addresses(self, ray, actors: list[_Actor]) -> None:
        """Non-blocking: ask every actor for its address at most once a second and take the
        answers that are in. A restarted actor has a new port; a dead one drops out."""
        now = time.monotonic()
        for actor in actors:
            if actor.pending is None and now - actor.refreshed_at >= ADDRESS_REFRESH_S:
                actor.pending = actor.handle.address.remote()
        pending = [a.pending for a in actors if a.pending is not None]
        if not pending:
            return
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        ready_ids = {ref.hex() for ref in ready}
        for actor in actors:
            if actor.pending is None or actor.pending.hex() not in ready_ids:
                continue
            try:
                actor.address, actor.alive = ray.get(actor.pending), True
            except Exception as error:  # noqa: BLE001 - the actor died or is restarting
                if actor.alive:
                    log.warning("worker %s unavailable: %s", actor.worker_id, type(error).__name__)
                actor.alive = False
            actor.pending, actor.refreshed_at = None, now

    def _after_close(self) -> None:
        if self._started_ray:
            ray.shutdown()

    def _discard(self, actor: _Actor) -> None:
        self._kill(actor)

    def _stop(self, actor: _Actor) -> None:
        try:
            ray.get(
                actor.handle.drain_and_stop.remote(self._stop_timeout_s), timeout=self._stop_timeout_s + 5
            )
        except Exception as error:  # noqa: BLE001 - stop it anyway
            log.warning("worker %s did not drain cleanly: %s", actor.worker_id, error)
        self._kill(actor)

    @staticmethod
    def _kill(actor: _Actor) -> None:
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception as error:  # noqa: BLE001 - already gone
            log.debug("killing %s: %s", actor.worker_id, error)
        log.info("worker %s stopped", actor.worker_id)
