"""The internal trust domain against real processes (no TLS): a stranger who can reach the worker
ports is refused on every worker RPC and on the transfer port, cannot poison a tenant's cache,
cannot pin every decode slot, and idle or oversized transfer connections cost the worker nothing.
The router is the cluster member here: `LocalCluster` made a random cluster token for it."""

from __future__ import annotations

import os
import random
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from rpc.cluster_auth import TOKEN_HEADER
from tests.chaos.harness import WORKER_ARGS, list_workers, member_channel, stream, wait_pools_idle
from tests.helpers.reference import greedy_reference
from tests.security.attacks import (
    HEADER,
    REFUSED,
    every_worker_call,
    forge_transfer,
    refusal_code,
    worker_request,
)
from tests.security.conftest import plaintext_environment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
VICTIM_SALT = "victim-tenant"


@pytest.fixture(scope="module")
def cluster(tiny_model):
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=0, transfer_deadline_s=10.0)
    spec = ClusterSpec(tiny_model, worker_args=WORKER_ARGS, router=router)
    with plaintext_environment(), LocalCluster(spec) as running:
        yield running


def _prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 1000) for _ in range(length)]


def _worker(cluster, role: str):
    return next(w for w in list_workers(cluster) if w.role == role)


def test_a_stranger_is_refused_on_every_worker_rpc(cluster):
    prompt = _prompt(1, 64)
    for role in ("decode", "prefill"):
        worker = _worker(cluster, role)
        with grpc.insecure_channel(worker.address) as channel:
            calls = every_worker_call(channel, VICTIM_SALT, prompt)
            for credential in ((), ((TOKEN_HEADER, "guessed"),), (("authorization", "Bearer tenant-token"),)):
                for name, call in calls.items():
                    code = refusal_code(call, credential)
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        continue  # the other role's service: not served here at all
                    assert code in REFUSED, f"{role} {name} with {credential}: {code}"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # health stays open
    assert not any(w.draining for w in list_workers(cluster)), "a stranger drained a worker"
    seen = stream(cluster.address, token_ids=prompt, max_tokens=8)
    assert seen.finish_reason == "length"


def test_the_forged_reservation_attack_is_refused(cluster, reference_llm):
    prompt, max_tokens = _prompt(2, 96), 12
    reference = greedy_reference(reference_llm, prompt, max_tokens)
    decode = _worker(cluster, "decode")
    # 1. The stranger's own Reserve with the victim's salt: refused before anything is reserved.
    with grpc.insecure_channel(decode.address) as channel:
        assert refusal_code(every_worker_call(channel, VICTIM_SALT, prompt)["Reserve"], ()) in REFUSED
    # 2. Worse: the stranger learned a live reservation's transfer port and id (not its secret)
    #    and writes random KV with null checksums into it.
    with member_channel(cluster, decode.address) as channel:
        stub = worker_pb2_grpc.DecodeServiceStub(channel)
        request = worker_request("live", prompt, VICTIM_SALT)
        reply = stub.Reserve(worker_pb2.ReserveRequest(request=request, transfer_id="live-t", deadline_s=3.0), timeout=10)
        descriptor = reply.descriptor
        units = {u.name: list(u.units) for u in descriptor.units}
        layouts = {lay.name: (lay, units[lay.name]) for lay in descriptor.layouts}
        for secret in (None, "", "0" * 32):
            forge_transfer(descriptor.address.decode(), "live-t", layouts, secret)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Decode(worker_pb2.DecodeRequest(request_id="live"), timeout=20))
        assert "no sender connected" in refused.value.details(), refused.value.details()
    # 3. The victim, through the router, twice (the second turn is served from the cache).
    for _ in range(2):
        seen = stream(cluster.address, token_ids=prompt, max_tokens=max_tokens, session_id="victim")
        assert seen.token_ids == reference
    wait_pools_idle(cluster)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _transfer_address(cluster, decode) -> str:
    with member_channel(cluster, decode.address) as channel:
        stub = worker_pb2_grpc.DecodeServiceStub(channel)
        request = worker_request("probe", _prompt(3, 20), "ops")
        reply = stub.Reserve(worker_pb2.ReserveRequest(request=request, transfer_id="probe-t", deadline_s=5), timeout=10)
        stub.CancelReservation(worker_pb2.CancelReservationRequest(request_id="probe"), timeout=10)
    return reply.descriptor.address.decode()


def test_idle_and_oversized_transfer_connections_are_bounded(cluster, reference_llm):
    decode = _worker(cluster, "decode")
    pid = cluster.pool.process(decode.worker_id).pid
    host, port = _transfer_address(cluster, decode).rsplit(":", 1)
    threads_before, rss_before = _threads(pid), _rss(pid)
    idle = []
    for _ in range(1000):
        try:
            idle.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:
            pass  # the worker may refuse some outright: that is fine too
    huge = []
    for _ in range(16):  # each announces a 64 MiB frame and sends 1 MiB of it
        sock = socket.create_connection((host, int(port)), timeout=5)
        try:
            sock.sendall(HEADER.pack(b"BKV1", 64 << 20) + os.urandom(1 << 20))
        except OSError:
            pass
        huge.append(sock)
    time.sleep(1.0)
    threads_after, rss_after = _threads(pid), _rss(pid)
    assert threads_after - threads_before <= 4, f"{threads_before} -> {threads_after} threads"
    assert rss_after - rss_before < 64 << 20, f"RSS grew by {(rss_after - rss_before) >> 20} MiB"
    prompt = _prompt(4, 40)
    seen = stream(cluster.address, token_ids=prompt, max_tokens=6)  # transfers still get through
    assert seen.token_ids == greedy_reference(reference_llm, prompt, 6)
    for sock in idle + huge:
        sock.close()


def test_reservation_deadlines_are_clamped_and_one_tenant_cannot_pin_every_slot(cluster, reference_llm):
    decode = _worker(cluster, "decode")
    with member_channel(cluster, decode.address) as channel:
        stub = worker_pb2_grpc.DecodeServiceStub(channel)
        request = worker_request("forever", _prompt(5, 20), "hog")
        reply = stub.Reserve(worker_pb2.ReserveRequest(request=request, transfer_id="forever-t", deadline_s=1e9), timeout=10)
        assert reply.descriptor.deadline_unix_s - time.time() <= 61.0
        stub.CancelReservation(worker_pb2.CancelReservationRequest(request_id="forever"), timeout=10)
        total_slots = _worker(cluster, "decode").load.total_slots
        held = []
        with pytest.raises(grpc.RpcError) as full:
            for i in range(total_slots + 1):
                request = worker_request(f"hog-{i}", _prompt(6, 20), "hog")
                stub.Reserve(worker_pb2.ReserveRequest(request=request, transfer_id=f"hog-{i}-t", deadline_s=30), timeout=10)
                held.append(f"hog-{i}")
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 1 <= len(held) <= total_slots // 2
        prompt = _prompt(7, 40)  # another tenant is still served while the hog holds its share
        seen = stream(cluster.address, token_ids=prompt, max_tokens=6, timeout_s=60)
        assert seen.token_ids == greedy_reference(reference_llm, prompt, 6)
        for request_id in held:
            stub.CancelReservation(worker_pb2.CancelReservationRequest(request_id=request_id), timeout=10)
    wait_pools_idle(cluster)
