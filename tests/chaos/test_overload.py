"""Overload: admission is bounded at the router (`RouterConfig.max_in_flight`) and at each worker
(`--max-queue`); past either bound the client gets RESOURCE_EXHAUSTED with a retry hint in the
trailing metadata (`retry-after-ms`), and once the load is gone requests succeed again."""

from __future__ import annotations

import grpc
import pytest

from baton.client import build_request
from baton_pb.v1 import common_pb2, public_pb2_grpc, worker_pb2, worker_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import WORKER_ARGS, list_workers, member_channel, stream, wait_pools_idle
from tests.helpers.reference import greedy_reference

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
LONG = 5000  # tokens: a stream that outlives the test's checks; it is cancelled at the end


@pytest.fixture(scope="module")
def cluster(tiny_model):
    # One decode worker that prefills locally (colocated), one request at a time everywhere.
    # LONG exceeds the tiny model's 4096-token context, the default --max-tokens-limit: raise it.
    router = RouterConfig(
        model="", listen="127.0.0.1:0", local_prefill_threshold=1_000_000, max_in_flight=1, max_tokens_limit=8192
    )
    spec = ClusterSpec(
        tiny_model, prefill=0, decode=1, worker_args=(*WORKER_ARGS, "--max-queue", "1"), router=router
    )
    with LocalCluster(spec) as running:
        yield running


def _rejected(address: str) -> grpc.RpcError:
    request = build_request("", None, [7, 8, 9], None, "", "", False, {"temperature": 0.0, "max_tokens": 4})
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as error:
        list(public_pb2_grpc.BatonStub(channel).Generate(request, timeout=60))
    return error.value


def _retry_hint_ms(error: grpc.RpcError) -> int:
    return int(dict(error.trailing_metadata() or ()).get("retry-after-ms", "0"))


def _hog(channel: grpc.Channel, call):
    """Starts a long stream and waits for its first tokens, so it is admitted and running."""
    responses = call(channel)
    first = next(responses)
    while not first.token_ids:
        first = next(responses)
    return responses


def test_router_admission_is_bounded(cluster, reference_llm):
    request = build_request(
        "",
        None,
        [5] * 20,
        None,
        "",
        "hog-router",
        False,
        {"temperature": 0.0, "max_tokens": LONG, "ignore_eos": True},
    )
    with grpc.insecure_channel(cluster.address) as channel:
        hog = _hog(channel, lambda ch: public_pb2_grpc.BatonStub(ch).Generate(request, timeout=120))
        error = _rejected(cluster.address)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "router is full" in error.details()
        assert _retry_hint_ms(error) > 0
        hog.cancel()
    wait_pools_idle(cluster)
    seen = stream(cluster.address, token_ids=[3, 4, 5, 6], max_tokens=5)  # room again
    assert seen.token_ids == greedy_reference(reference_llm, [3, 4, 5, 6], 5)


def test_worker_admission_is_bounded(cluster, reference_llm):
    [decode] = [w for w in list_workers(cluster) if w.role == "decode"]
    sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=LONG, ignore_eos=True)
    worker_request = worker_pb2.WorkerRequest(
        request_id="hog-worker", prompt_token_ids=[5] * 20, sampling=sampling
    )

    def generate(channel):
        stub = worker_pb2_grpc.DecodeServiceStub(channel)
        return stub.Generate(worker_pb2.WorkerGenerateRequest(request=worker_request), timeout=120)

    with member_channel(cluster, decode.address) as channel:
        hog = _hog(channel, generate)
        with pytest.raises(grpc.RpcError) as direct:  # the worker itself answers with the hint
            second = worker_pb2.WorkerRequest(request_id="second", prompt_token_ids=[1, 2], sampling=sampling)
            list(
                worker_pb2_grpc.DecodeServiceStub(channel).Generate(
                    worker_pb2.WorkerGenerateRequest(request=second), timeout=30
                )
            )
        assert direct.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _retry_hint_ms(direct.value) > 0
        error = _rejected(cluster.address)  # the router retried with backoff, then gave up
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "every worker is full" in error.details()
        assert _retry_hint_ms(error) > 0
        hog.cancel()
    wait_pools_idle(cluster)
    seen = stream(cluster.address, token_ids=[3, 4, 5, 6], max_tokens=5)
    assert seen.token_ids == greedy_reference(reference_llm, [3, 4, 5, 6], 5)
