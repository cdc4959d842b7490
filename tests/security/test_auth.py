"""Token auth on the public and admin APIs (admin separate), the tenant bound to the token so one
tenant's cache never serves another's prompt, and limits on message size and max_tokens."""

from __future__ import annotations

import random

import grpc
import pytest

from baton.client import build_request
from baton_pb.v1 import admin_pb2, admin_pb2_grpc, public_pb2, public_pb2_grpc
from tests.chaos.harness import WORKER_ARGS, stream
from tests.helpers.reference import greedy_reference
from tests.security.conftest import MAX_PROMPT_BYTES, MAX_TOKENS_LIMIT, bearer, secure_channel

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
NO_TOKEN: tuple = ()
BAD_TOKEN = (("authorization", "Bearer not-a-token"),)
NOT_BEARER = (("authorization", "Basic YWxpY2U6c2VjcmV0"),)


@pytest.fixture(scope="module")
def channel(secured_cluster, pki):
    with secure_channel(secured_cluster.address, pki["client"], pki["client"].ca) as channel:
        yield channel


def _code(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        result = call(*args, **kwargs)
        if not hasattr(result, "ByteSize"):  # a stream: read it to the end
            list(result)
    except grpc.RpcError as error:
        assert error.details(), "every refusal carries a message"
        return error.code()
    return grpc.StatusCode.OK


def _generate(channel, metadata, **fields) -> grpc.StatusCode:
    request = build_request(
        fields.pop("session_id", ""), fields.pop("text", None), fields.pop("token_ids", [1, 2, 3]), None,
        fields.pop("tenant", ""), "", False, {"temperature": 0.0, "max_tokens": 2, **fields},
    )  # fmt: skip
    return _code(public_pb2_grpc.BatonStub(channel).Generate, request, timeout=30, metadata=metadata)


@pytest.mark.parametrize("metadata", [NO_TOKEN, BAD_TOKEN, NOT_BEARER], ids=["none", "unknown", "not bearer"])
def test_no_valid_token_is_unauthenticated(channel, metadata):
    public = public_pb2_grpc.BatonStub(channel)
    admin = admin_pb2_grpc.BatonAdminStub(channel)
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert _generate(channel, metadata) == unauthenticated
    assert (
        _code(public.GetModelInfo, public_pb2.GetModelInfoRequest(), timeout=5, metadata=metadata)
        == unauthenticated
    )
    assert (
        _code(public.Abort, public_pb2.AbortRequest(request_id="x"), timeout=5, metadata=metadata)
        == unauthenticated
    )
    assert (
        _code(admin.ListWorkers, admin_pb2.ListWorkersRequest(), timeout=5, metadata=metadata)
        == unauthenticated
    )


def test_admin_rpcs_need_an_admin_token(channel, secured_cluster):
    admin = admin_pb2_grpc.BatonAdminStub(channel)
    denied = grpc.StatusCode.PERMISSION_DENIED
    user = bearer("alice")
    assert _code(admin.ListWorkers, admin_pb2.ListWorkersRequest(), timeout=5, metadata=user) == denied
    assert _code(admin.Scale, admin_pb2.ScaleRequest(prefill=0, decode=1), timeout=5, metadata=user) == denied
    assert (
        _code(admin.Drain, admin_pb2.DrainRequest(worker_id="decode-1"), timeout=5, metadata=user) == denied
    )
    assert len(secured_cluster.pool.members()) == 2, "nothing was scaled or drained"
    workers = admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10, metadata=bearer("admin")).workers
    assert sorted(w.role for w in workers) == ["decode", "prefill"]
    # an admin token is not a tenant's token: it serves the admin API only as far as tenants go
    assert _generate(channel, bearer("alice")) == grpc.StatusCode.OK


def test_tenant_is_bound_to_the_token(channel):
    assert _generate(channel, bearer("alice"), tenant="bob") == grpc.StatusCode.PERMISSION_DENIED
    assert _generate(channel, bearer("alice"), tenant="alice") == grpc.StatusCode.OK


def test_one_tenants_cache_never_serves_another(channel, reference_llm):
    rng = random.Random(42)
    prompt = [rng.randrange(5, 1000) for _ in range(120)]  # 7 full blocks
    expected = greedy_reference(reference_llm, prompt, 5)

    def run(tenant: str, session: str):
        seen = stream(
            "", channel=channel, token_ids=prompt, max_tokens=5, session_id=session, metadata=bearer(tenant)
        )
        assert seen.token_ids == expected
        return seen.cached_tokens

    assert run("alice", "a1") == 0
    assert run("bob", "b1") == 0, "bob was served from alice's cache"
    if "--no-prefix-cache" not in WORKER_ARGS:
        assert run("alice", "a2") > 0, "alice's own prompt is cached"
        assert run("bob", "b2") > 0


def test_message_size_and_max_tokens_limits(channel):
    huge = "word " * (MAX_PROMPT_BYTES // 4)
    assert (
        _generate(channel, bearer("alice"), text=huge, token_ids=None) == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert (
        _generate(channel, bearer("alice"), max_tokens=MAX_TOKENS_LIMIT + 1)
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _generate(channel, bearer("alice"), max_tokens=MAX_TOKENS_LIMIT) == grpc.StatusCode.OK
