"""A worker that leaves the pool mid-request: the registry used to close its channel at once, and a
request still holding the handle then failed with INVALID_ARGUMENT "Cannot invoke RPC on closed
channel" (not retried: a flaky chaos-test failure). The channel now closes after a grace period,
so such a call fails as UNAVAILABLE (the worker is gone) and is retried elsewhere."""

from __future__ import annotations

import time

import grpc
import pytest

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from router.pools.base import Pool, PoolMember


class ListedPool(Pool):
    """Members are whatever the test lists (the registry only reads `members()`)."""

    def __init__(self, listed: list[PoolMember]) -> None:
        self.listed = listed

    def start(self, prefill: int, decode: int) -> None: ...

    def members(self) -> list[PoolMember]:
        return list(self.listed)

    def add(self, role): ...

    def remove(self, key: str) -> None: ...

    def close(self) -> None: ...


def test_the_registry_closes_a_departed_workers_channel_after_a_grace_period():
    from prefix_index.embedded import EmbeddedPrefixIndex
    from router.registry import WorkerRegistry

    pool = ListedPool([PoolMember("127.0.0.1:1", "decode", "decode-0")])
    registry = WorkerRegistry(pool, EmbeddedPrefixIndex(), feed_index=False, close_grace_s=0.5)
    registry.refresh()
    (handle,) = registry.workers()
    pool.listed = []  # the worker leaves the pool
    registry.refresh()
    assert registry.workers() == []
    stub = worker_pb2_grpc.WorkerControlStub(handle.channel)
    with pytest.raises(grpc.RpcError) as failed:  # still open: the dead worker is unreachable
        stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    time.sleep(1.0)
    with pytest.raises(ValueError, match="closed channel"):
        stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=5)
    registry.stop()
