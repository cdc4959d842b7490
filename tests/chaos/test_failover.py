"""Failover for real: SIGKILL a decode worker mid-stream, a prefill worker mid-transfer, restart a
worker under its own id; the client's greedy stream must equal `engine.LLM` run alone, with no token
lost or repeated, and every pool must end up empty."""

from __future__ import annotations

import random
import threading

import pytest

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import (
    WORKER_ARGS,
    failovers,
    kill_worker,
    list_workers,
    member_channel,
    restart_worker,
    stream,
    wait_for,
    wait_pools_idle,
)
from tests.helpers.reference import greedy_reference
from worker.descriptors import descriptor_from_proto  # noqa: F401 - the descriptor must parse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster(tiny_model):
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=0, transfer_deadline_s=10.0)
    spec = ClusterSpec(tiny_model, prefill=2, decode=2, worker_args=WORKER_ARGS, router=router)
    with LocalCluster(spec) as running:
        yield running


def _prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 1000) for _ in range(length)]


def _replace_dead(cluster, role: str) -> None:
    """Capacity recovers: a fresh worker joins and the router sees it."""
    cluster.pool.add(role)
    want = {"prefill": 2, "decode": 2}
    cluster.router.core.registry.wait_until_ready(want["prefill"], want["decode"], timeout_s=60)


def test_decode_worker_killed_mid_stream(cluster, reference_llm):
    prompt, max_tokens = _prompt(1, 70), 160
    before = failovers(cluster)
    killed: list[str] = []

    def kill_after_some_tokens(seen):
        if not killed and len(seen.token_ids) >= 6:
            killed.append(seen.decode_worker)
            kill_worker(cluster, seen.decode_worker)

    seen = stream(
        cluster.address,
        token_ids=prompt,
        max_tokens=max_tokens,
        session_id="kill-decode",
        on_tokens=kill_after_some_tokens,
    )
    assert killed, "the stream ended before the kill"
    assert failovers(cluster) > before, "the router failed over"
    assert seen.finish_reason == "length"
    assert seen.token_ids == greedy_reference(reference_llm, prompt, max_tokens), "token lost or repeated"
    _replace_dead(cluster, "decode")
    wait_pools_idle(cluster)


def test_prefill_worker_killed_mid_transfer(cluster, reference_llm):
    """The prompt is long enough that the prefill takes a while; the kill lands while the decode
    worker holds a reservation for it. The router cancels it, the request is retried elsewhere."""
    prompt, max_tokens = _prompt(2, 1500), 8
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(
            seen=stream(cluster.address, token_ids=prompt, max_tokens=max_tokens, session_id="kill-prefill")
        )
    )
    thread.start()

    def reserved_somewhere() -> bool:
        return any(w.role == "decode" and w.load.pending_transfers for w in list_workers(cluster))

    wait_for(reserved_somewhere, 30, "a decode reservation")
    busy = [w.worker_id for w in list_workers(cluster) if w.role == "prefill" and w.load.running_requests]
    assert busy, "the prefill is running"
    kill_worker(cluster, busy[0])
    thread.join(120)
    assert not thread.is_alive(), "the request hung"
    assert result["seen"].token_ids == greedy_reference(reference_llm, prompt, max_tokens)
    _replace_dead(cluster, "prefill")
    wait_pools_idle(cluster)


def test_unclaimed_reservation_expires_and_is_freed(cluster):
    """A reservation whose transfer never comes (its prefill worker and router both gone) is freed
    by the decode worker's reaper after its deadline."""
    decode = next(w for w in list_workers(cluster) if w.role == "decode")
    with member_channel(cluster, decode.address) as channel:
        request = worker_pb2.WorkerRequest(request_id="orphan", prompt_token_ids=_prompt(3, 100))
        request.sampling.max_tokens = 4
        reply = worker_pb2_grpc.DecodeServiceStub(channel).Reserve(
            worker_pb2.ReserveRequest(request=request, transfer_id="orphan-t", deadline_s=1.0), timeout=10
        )
        assert reply.descriptor.transfer_id == "orphan-t"
        held = next(w for w in list_workers(cluster) if w.worker_id == decode.worker_id)
        assert held.load.pending_transfers == 1 and held.load.free_pages < held.load.total_pages
    wait_pools_idle(cluster, timeout_s=20)


def test_restarted_worker_rejoins_with_a_new_epoch(cluster, reference_llm):
    decode = next(w for w in list_workers(cluster) if w.role == "decode")
    restart_worker(cluster.pool, decode.worker_id)

    def rejoined() -> bool:
        now = [w for w in list_workers(cluster) if w.worker_id == decode.worker_id]
        return len(now) == 1 and now[0].healthy and now[0].epoch > decode.epoch

    wait_for(rejoined, 60, f"{decode.worker_id} to rejoin with a new epoch")
    prompt = _prompt(4, 50)
    for turn in range(3):  # enough turns that both decode workers serve
        seen = stream(cluster.address, token_ids=prompt, max_tokens=6, session_id=f"rejoin-{turn}")
        assert seen.token_ids == greedy_reference(reference_llm, prompt, 6)
    wait_pools_idle(cluster)
