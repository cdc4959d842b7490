"""Waiting for a worker to answer `grpc.health.v1.Health/Check` with SERVING."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.pools.base import WorkerStartError
from rpc.grpc_server import insecure_or_tls_channel
from rpc.tls import TlsConfig

POLL_S = 0.05


def is_serving(address: str, timeout_s: float = 1.0, tls: TlsConfig | None = None) -> bool:
    with insecure_or_tls_channel(address, tls or TlsConfig.from_env()) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_serving(
    address: str,
    timeout_s: float,
    *,
    failure: Callable[[], str | None] = lambda: None,
    tls: TlsConfig | None = None,
) -> None:
    """Poll health until SERVING. `failure()` returns a reason once waiting is pointless (the
    worker process exited), so a crash is reported at once instead of at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        reason = failure()
        if reason:
            raise WorkerStartError(reason)
        if is_serving(address, timeout_s=min(1.0, max(0.05, deadline - time.monotonic())), tls=tls):
            return
        if time.monotonic() >= deadline:
            raise WorkerStartError(f"worker at {address} not SERVING after {timeout_s:.0f} s")
        time.sleep(POLL_S)
