"""The internal trust domain under mutual TLS: a tenant's client certificate from the cluster CA
passes the handshake but is refused on every worker RPC (it lacks the internal identity); a
certificate with the internal identity SAN is a cluster member even without the token."""

from __future__ import annotations

import grpc
import pytest

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from tests.chaos.harness import stream
from tests.helpers.reference import greedy_reference
from tests.security.attacks import REFUSED, every_worker_call, refusal_code
from tests.security.conftest import bearer, secure_channel

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
PROMPT = [21, 22, 23, 24, 25, 26, 27, 28, 29, 30] * 5


def test_a_tenant_certificate_is_refused_on_worker_rpcs(secured_cluster, pki, reference_llm):
    tenant = pki["client"]
    for member in secured_cluster.pool.members():
        with secure_channel(member.address, tenant, tenant.ca) as channel:
            for name, call in every_worker_call(channel, "bob", PROMPT).items():
                for metadata in ((), bearer("alice"), bearer("admin")):
                    code = refusal_code(call, metadata)
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        continue  # the other role's service
                    assert code in REFUSED, f"{member.role} {name} with a tenant certificate: {code}"
    with secure_channel(secured_cluster.address, tenant, tenant.ca) as channel:  # the victim is unharmed
        seen = stream("", channel=channel, token_ids=PROMPT, max_tokens=6, metadata=bearer("bob"))
    assert seen.token_ids == greedy_reference(reference_llm, PROMPT, 6)


def test_the_internal_identity_is_a_cluster_credential(secured_cluster, pki):
    service = pki["service"]  # its SAN holds spiffe://baton/internal
    for member in secured_cluster.pool.members():
        with secure_channel(member.address, service, service.ca) as channel:
            info = worker_pb2_grpc.WorkerControlStub(channel).GetLoad(worker_pb2.GetLoadRequest(), timeout=10)
        assert info.worker_id
