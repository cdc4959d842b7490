"""Tenants inside the public API, against real processes: request ids are scoped per tenant (Abort
reaches only the caller's own requests, and another tenant's id fails exactly like an unknown one;
nobody can squat another's id), each request limit is INVALID_ARGUMENT naming its flag, a huge prompt
tokenizes without stalling a small request, and `usage.cached_tokens` counts what the computing
worker did not compute (not what the decode worker's reservation held)."""

from __future__ import annotations

import random
import threading

import grpc
import pytest

from baton.client import build_request
from baton_pb.v1 import public_pb2, public_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import WORKER_ARGS, stream
from tests.helpers.reference import greedy_reference

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
TOKENS = {"alice": "tok-alice-tenancy", "bob": "tok-bob-tenancy"}
THRESHOLD = 64  # shorter prompts prefill on the decode worker


def bearer(user: str) -> tuple:
    return (("authorization", f"Bearer {TOKENS[user]}"),)


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("".join(f"{token} {user} user\n" for user, token in TOKENS.items()))
    router = RouterConfig(
        model="", listen="127.0.0.1:0", local_prefill_threshold=THRESHOLD, auth_tokens_file=str(tokens)
    )
    with LocalCluster(ClusterSpec(tiny_model, worker_args=WORKER_ARGS, router=router)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cluster):
    with grpc.insecure_channel(cluster.address) as channel:
        yield public_pb2_grpc.BatonStub(channel)


def _prompt(seed: int, length: int, vocab: int = 200) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, vocab - 5) for _ in range(length)]


def _abort_error(stub, user: str, request_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Abort(public_pb2.AbortRequest(request_id=request_id), timeout=10, metadata=bearer(user))
    return caught.value.code(), caught.value.details()


class _Running:
    """A long greedy stream of `user` in a thread; `started` is set at its first tokens."""

    def __init__(self, cluster, user: str, request_id: str, prompt: list[int], max_tokens: int = 300) -> None:
        self.started = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.prompt, self.max_tokens = prompt, max_tokens

        def run() -> None:
            try:
                self.result = stream(
                    cluster.address, token_ids=prompt, max_tokens=max_tokens, request_id=request_id,
                    metadata=bearer(user), on_tokens=lambda seen: self.started.set(),
                )  # fmt: skip
            except BaseException as error:  # noqa: BLE001 - reported by the test
                self.error = error
            finally:
                self.started.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.started.wait(120), "the stream never started"

    def join(self):
        self.thread.join(180)
        assert self.error is None, self.error
        return self.result


def test_abort_reaches_only_the_callers_own_request(cluster, stub, reference_llm):
    bobs = _Running(cluster, "bob", "job-1", _prompt(1, 20))
    while_running = _abort_error(stub, "alice", "job-1")
    unknown = _abort_error(stub, "alice", "never-started")
    result = bobs.join()
    after = _abort_error(stub, "alice", "job-1")
    assert while_running == after, "another tenant's running id looks exactly like a finished one"
    assert while_running[0] == unknown[0] == grpc.StatusCode.NOT_FOUND
    assert unknown[1] == while_running[1].replace("job-1", "never-started")
    assert result.finish_reason == "length", "alice's Abort ended bob's stream"
    assert result.token_ids == greedy_reference(reference_llm, bobs.prompt, bobs.max_tokens)

    own = _Running(cluster, "bob", "job-2", _prompt(2, 20))
    reply = stub.Abort(public_pb2.AbortRequest(request_id="job-2"), timeout=10, metadata=bearer("bob"))
    assert reply.aborted
    assert own.join().finish_reason == "abort"


def test_a_tenant_cannot_squat_another_tenants_request_id(cluster, stub, reference_llm):
    bobs = _Running(cluster, "bob", "predictable-7", _prompt(3, 20))
    prompt = _prompt(4, 24)
    alices = stream(
        cluster.address, token_ids=prompt, max_tokens=6, request_id="predictable-7", metadata=bearer("alice")
    )
    assert alices.finish_reason == "length"
    assert alices.token_ids == greedy_reference(reference_llm, prompt, 6)
    with pytest.raises(grpc.RpcError) as twice:  # the same tenant reusing a running id is refused
        stream(cluster.address, token_ids=prompt, max_tokens=2, request_id="predictable-7", metadata=bearer("bob"))
    assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bobs.join().finish_reason == "length"


@pytest.mark.parametrize(
    ("fields", "flag"),
    [
        ({"request_id": "r" * 200_000}, "--max-request-id-bytes"),
        ({"session_id": "s" * 100_000}, "--max-session-id-bytes"),
        ({"stop": [f"stop{i}" for i in range(1000)]}, "--max-stop-strings"),
        ({"stop": ["x" * 3000, "y" * 3000]}, "--max-stop-bytes"),
        ({"stop_token_ids": list(range(100, 1100))}, "--max-stop-token-ids"),
    ],
)
def test_each_limit_is_invalid_argument_naming_its_flag(stub, fields, flag):
    sampling = {"temperature": 0.0, "max_tokens": 2}
    sampling.update({k: v for k, v in fields.items() if k.startswith("stop")})
    request = build_request(
        fields.get("session_id", ""), None, [1, 2, 3], None, "", fields.get("request_id", ""), False, sampling
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(request, timeout=30, metadata=bearer("alice")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert flag in caught.value.details() and len(caught.value.details()) < 300


@pytest.mark.parametrize("megabytes", [1.0, pytest.param(7.5, marks=pytest.mark.slow)])
def test_a_small_request_completes_while_a_huge_prompt_tokenizes(cluster, stub, megabytes):
    """One 7.5 MB prompt blocked the router for 6 s. Now it tokenizes off the handler threads with the
    GIL released, so a small request finishes first: the ORDER of the events is the assertion."""
    pool = cluster.router.core.tokenize_pool
    events: list[str] = []
    huge = build_request("", "lorem ipsum dolor sit amet, " * int(megabytes * (1 << 20) / 28), None, None, "", "huge", False, {"max_tokens": 2})

    def send_huge() -> None:
        try:
            list(stub.Generate(huge, timeout=200, metadata=bearer("alice")))
            events.append("huge ok")
        except grpc.RpcError as error:  # longer than the tiny model's context: refused after tokenizing
            events.append(f"huge {error.code().name}")

    thread = threading.Thread(target=send_huge, daemon=True)
    thread.start()
    while pool.active == 0 and thread.is_alive():
        threading.Event().wait(0.005)
    assert pool.active == 1, "the huge prompt should be tokenizing now"
    small = stream(cluster.address, token_ids=[5, 6, 7, 8], max_tokens=2, metadata=bearer("bob"))
    events.append("small done")
    still_tokenizing = pool.active == 1
    thread.join(200)
    assert small.finish_reason == "length"
    assert events == ["small done", "huge INVALID_ARGUMENT"], events
    assert still_tokenizing, "the small request finished while the huge prompt was still tokenizing"


def test_cached_tokens_come_from_the_computing_worker(cluster, reference_llm):
    """Turn 1 prefills locally (short), so only the decode worker caches it; turn 2 is disaggregated
    and the prefill worker, holding nothing, computes every token. The decode worker's reservation
    still holds turn 1's blocks: that saves transfer, not compute, so usage.cached_tokens is 0."""
    metrics = cluster.router.core.metrics
    saved_before = metrics.transfer_saved_tokens._value.get()
    turn1 = _prompt(5, 45)
    first = stream(cluster.address, token_ids=turn1, max_tokens=8, session_id="usage", metadata=bearer("alice"))
    assert not first.prefill_worker, "turn 1 is short: local prefill"
    turn2 = turn1 + first.token_ids + _prompt(6, 100)
    second = stream(cluster.address, token_ids=turn2, max_tokens=8, session_id="usage", metadata=bearer("alice"))
    saved = metrics.transfer_saved_tokens._value.get() - saved_before
    assert second.prefill_worker and second.decode_worker == first.decode_worker, "turn 2 is disaggregated"
    assert saved > 0, "the scenario needs the decode worker's reservation to hold turn 1's blocks"
    assert second.cached_tokens == 0, f"the prefill worker computed all; {saved} tokens only saved transfer"
    assert second.token_ids == greedy_reference(reference_llm, turn2, 8)
