"""Every kind of bad input gets its status code and a message; the workers stay alive. Also:
abort mid-stream frees the pages on both workers, and /metrics moved by the right amounts."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest

from baton.client import BatonClient, build_request
from baton_pb.v1 import admin_pb2, admin_pb2_grpc, public_pb2
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tiny_model):
    router = RouterConfig(
        model="", listen="127.0.0.1:0", local_prefill_threshold=0, metrics_port=_free_port(), max_tokens_limit=4096
    )
    with LocalCluster(ClusterSpec(tiny_model, router=router)) as running:
        yield running


def _status(client: BatonClient, **kwargs) -> grpc.StatusCode:
    request = build_request(
        kwargs.pop("session_id", ""), kwargs.pop("text", None), kwargs.pop("token_ids", None),
        kwargs.pop("chat", None), kwargs.pop("tenant", ""), kwargs.pop("request_id", ""), False, kwargs,
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as error:
        for _ in client.stub.Generate(request, timeout=60):
            pass
    assert error.value.details(), "every error carries a message"
    return error.value.code()


def _workers(cluster) -> list[admin_pb2.WorkerInfo]:
    admin = admin_pb2_grpc.BatonAdminStub(grpc.insecure_channel(cluster.admin_address))
    return list(admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10).workers)


def test_bad_inputs_get_their_status_codes(cluster):
    client = BatonClient(cluster.address)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _status(client, text="") == invalid
    assert _status(client, token_ids=[]) == invalid
    assert _status(client, token_ids=[10**9]) == invalid
    assert _status(client, token_ids=[1] * 40_000) == invalid  # longer than the context window
    assert _status(client, token_ids=[1, 2, 3], temperature=-1.0) == invalid
    assert _status(client, token_ids=[1, 2, 3], top_p=0.0) == invalid
    assert _status(client, token_ids=[1, 2, 3], max_tokens=0) == invalid
    assert _status(client, token_ids=[1, 2, 3], max_tokens=100_000) == invalid
    assert _status(client, chat=[{"role": "wizard", "content": "hi"}]) == invalid
    request = public_pb2.GenerateRequest(model="no-such-model", text="hello")
    with pytest.raises(grpc.RpcError) as error:
        list(client.stub.Generate(request, timeout=30))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        client.stub.Abort(public_pb2.AbortRequest(request_id="never-started"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    workers = _workers(cluster)
    assert len(workers) == 2 and all(w.healthy for w in workers)
    good = client.generate(token_ids=[5, 6, 7, 8], temperature=0.0, max_tokens=4, ignore_eos=True)
    assert len(good.token_ids) == 4
    client.close()


def test_abort_mid_stream_frees_pages_on_both_workers(cluster):
    client = BatonClient(cluster.address)
    request = build_request("abort-me", None, list(range(20, 220)), None, "", "abort-1", False,
                            {"temperature": 0.0, "max_tokens": 2000, "ignore_eos": True})
    stream = client.stub.Generate(request, timeout=120)
    received = []
    for response in stream:
        received.extend(response.token_ids)
        if len(received) >= 3:
            break
    aborted = client.stub.Abort(public_pb2.AbortRequest(request_id="abort-1"), timeout=10)
    assert aborted.aborted
    final = [r for r in stream]
    assert final and final[-1].finish_reason == "abort"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        loads = [w.load for w in _workers(cluster)]
        idle = all(w.running_requests == 0 and w.waiting_requests == 0 and w.pending_transfers == 0 for w in loads)
        # no request holds a page: every used page belongs to the prefix cache
        if idle and all(w.total_pages - w.free_pages == w.cached_blocks for w in loads):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"pages not freed after abort: {loads}")
    client.close()


def test_metrics_counters_move(cluster):
    port = cluster.router.metrics_port
    assert port, "the router serves /metrics"

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    before = scrape()
    client = BatonClient(cluster.address)
    for i in range(3):
        client.generate(token_ids=[9, 8, 7, 6 + i], temperature=0.0, max_tokens=5, ignore_eos=True)
    client.close()
    after = scrape()
    ok = 'baton_router_requests_total{status="ok"}'
    assert after[ok] - before.get(ok, 0.0) == 3
    assert after["baton_router_completion_tokens_total"] - before.get("baton_router_completion_tokens_total", 0) == 15
    assert after["baton_router_ttft_seconds_count"] - before.get("baton_router_ttft_seconds_count", 0) == 3
