"""TLS on every gRPC service: with mutual TLS only callers holding a certificate from our CA get
past the handshake (router and workers alike) and the whole disaggregated path still works;
server-only TLS serves any client that verifies the server."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from baton_pb.v1 import public_pb2, public_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from rpc.tls import TlsConfig
from tests.chaos.harness import WORKER_ARGS, stream
from tests.helpers.reference import greedy_reference
from tests.security.conftest import bearer, secure_channel, tls_environment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
PROMPT = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20] * 4


def _model_info(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        public_pb2_grpc.BatonStub(channel).GetModelInfo(
            public_pb2.GetModelInfoRequest(), timeout=5, metadata=bearer("alice")
        )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _health(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_mutual_tls_end_to_end(secured_cluster, pki, reference_llm):
    ca = pki["client"].ca
    with secure_channel(secured_cluster.address, pki["client"], ca) as channel:
        assert _model_info(channel) == grpc.StatusCode.OK
        seen = stream("", channel=channel, token_ids=PROMPT, max_tokens=6, metadata=bearer("alice"))
    assert seen.prefill_worker and seen.decode_worker, "disaggregated: KV moved between TLS-only workers"
    assert seen.token_ids == greedy_reference(reference_llm, PROMPT, 6)


@pytest.mark.parametrize("caller", ["plaintext", "no client certificate", "certificate from another CA"])
def test_mutual_tls_refuses_strangers(secured_cluster, pki, caller):
    ca = pki["client"].ca
    workers = [m.address for m in secured_cluster.pool.members()]
    for address in [secured_cluster.address, *workers]:
        if caller == "plaintext":
            channel = grpc.insecure_channel(address)
        elif caller == "no client certificate":
            channel = secure_channel(address, None, ca)
        else:
            channel = secure_channel(address, pki["stranger"], pki["stranger"].ca)
        with channel:
            assert _health(channel) == grpc.StatusCode.UNAVAILABLE, f"{caller} got through to {address}"
    with secure_channel(workers[0], pki["client"], ca) as trusted:  # and the CA's own clients do
        assert _health(trusted) == grpc.StatusCode.OK


def test_server_only_tls(tiny_model, pki, reference_llm):
    """BATON_TLS_CLIENT_AUTH=0: TLS without client certificates; a plaintext caller still fails."""
    service = pki["service"]
    router = RouterConfig(
        model="",
        listen="127.0.0.1:0",
        local_prefill_threshold=1_000_000,
        tls=TlsConfig(cert=service.cert, key=service.key, ca=service.ca, client_auth=False),
    )
    spec = ClusterSpec(tiny_model, prefill=0, decode=1, worker_args=WORKER_ARGS, router=router)
    with tls_environment(service, client_auth=False), LocalCluster(spec) as cluster:
        with secure_channel(cluster.address, None, service.ca) as channel:
            seen = stream("", channel=channel, token_ids=PROMPT, max_tokens=4)
        assert seen.token_ids == greedy_reference(reference_llm, PROMPT, 4)
        with grpc.insecure_channel(cluster.address) as plaintext:
            assert _health(plaintext) == grpc.StatusCode.UNAVAILABLE
