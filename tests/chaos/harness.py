"""Fault-injection helpers shared by the chaos, failover, overload, security and drain tests:
stream a request and watch it, kill / restart workers of a `LocalCluster`'s `ProcessPool`, and
check that every pool is back to empty (no request, no pending transfer, no page held by anything
but the prefix cache)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from baton.client import build_request
from baton_pb.v1 import admin_pb2, admin_pb2_grpc, public_pb2_grpc
from router.pools.base import PoolMember
from rpc.cluster_auth import ClusterCredential
from rpc.grpc_server import insecure_or_tls_channel

# Extra worker flags for every test cluster, e.g. "--no-prefix-cache" while the engine's prefix
# cache is being worked on. Empty (cache on) is what CI runs.
WORKER_ARGS: tuple[str, ...] = tuple(os.environ.get("BATON_TEST_WORKER_ARGS", "").split())


@dataclass
class Streamed:
    """What a client saw of one Generate stream."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    cached_tokens: int = 0
    prompt_tokens: int = 0
    decode_worker: str = ""
    prefill_worker: str = ""


def stream(
    address: str,
    *,
    token_ids: list[int],
    max_tokens: int,
    session_id: str = "",
    request_id: str = "",
    metadata: tuple = (),
    timeout_s: float = 120.0,
    on_tokens: Callable[[Streamed], None] | None = None,
    channel: grpc.Channel | None = None,
) -> Streamed:
    """Greedy Generate; `on_tokens(seen)` runs after every message that carried tokens."""
    own = channel is None
    channel = channel or grpc.insecure_channel(address)
    try:
        request = build_request(
            session_id, None, token_ids, None, "", request_id, False,
            {"temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True},
        )  # fmt: skip
        seen = Streamed()
        for response in public_pb2_grpc.BatonStub(channel).Generate(
            request, timeout=timeout_s, metadata=metadata
        ):
            if response.HasField("route"):
                seen.decode_worker = response.route.decode_worker
                seen.prefill_worker = response.route.prefill_worker
            seen.token_ids.extend(response.token_ids)
            if response.finish_reason:
                seen.finish_reason = response.finish_reason
                seen.cached_tokens = response.usage.cached_tokens
                seen.prompt_tokens = response.usage.prompt_tokens
            if response.token_ids and on_tokens is not None:
                on_tokens(seen)
        return seen
    finally:
        if own:
            channel.close()


def list_workers(cluster, metadata: tuple = ()) -> list[admin_pb2.WorkerInfo]:
    with grpc.insecure_channel(cluster.admin_address) as channel:
        stub = admin_pb2_grpc.BatonAdminStub(channel)
        return list(stub.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10, metadata=metadata).workers)


def idle(load: admin_pb2.WorkerLoad) -> bool:
    """No request and no transfer holds anything: every used page belongs to the prefix cache."""
    return (
        load.running_requests == 0
        and load.waiting_requests == 0
        and load.pending_transfers == 0
        and load.total_pages - load.free_pages == load.cached_blocks
        and load.free_slots == load.total_slots
    )


def wait_pools_idle(cluster, timeout_s: float = 30.0, workers: Callable[[], list] | None = None) -> list:
    """Polls ListWorkers until every worker is idle; fails with the loads otherwise."""
    workers = workers or (lambda: list_workers(cluster))
    deadline = time.monotonic() + timeout_s
    while True:
        infos = workers()
        if all(idle(w.load) for w in infos):
            return infos
        if time.monotonic() > deadline:
            raise AssertionError(
                f"pools not back to empty after {timeout_s:.0f} s: {[(w.worker_id, w.load) for w in infos]}"
            )
        time.sleep(0.2)


def kill_worker(cluster, worker_id: str) -> None:
    """SIGKILL: no drain, no goodbye, as abrupt as a machine loss."""
    process = cluster.pool.process(worker_id)
    process.kill()
    process.wait(timeout=10)


def restart_worker(pool, worker_id: str) -> PoolMember:
    """Kills `worker_id` and starts a fresh process under the same id (what a supervisor or a Ray
    actor restart does): it comes back on a new port with a new epoch. Test-side, on ProcessPool's
    internals, until the pool offers a `restart`."""
    from router.pools.process import _Worker

    with pool._lock:
        old = pool._workers[worker_id]
    old.process.kill()
    old.process.wait(timeout=10)
    old.ready_file.unlink(missing_ok=True)
    argv = pool._command(old.role) + pool.spec.argv(worker_id, role=old.role, ready_file=str(old.ready_file))
    with open(old.log_file, "ab") as log_handle:
        process = subprocess.Popen(
            argv, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=pool._env, start_new_session=True,
        )  # fmt: skip
    fresh = _Worker(worker_id, old.role, process, old.ready_file, old.log_file)
    pool._wait_ready(fresh)
    with pool._lock:
        pool._workers[worker_id] = fresh
    return fresh.member()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def failovers(cluster) -> float:
    """The router's failover counter (the router runs in this process)."""
    value = cluster.router.core.metrics.registry.get_sample_value(
        "baton_router_events_total", {"event": "failovers"}
    )
    return value or 0.0


def member_channel(cluster, address: str) -> grpc.Channel:
    """A channel to a worker that presents the cluster token, as the router does."""
    return insecure_or_tls_channel(address, cluster=ClusterCredential(cluster.cluster_token))
