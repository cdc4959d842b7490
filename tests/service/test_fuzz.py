"""Fuzzing the public API (hypothesis): thousands of malformed requests — random oneofs,
huge / negative / NaN sampling values, bad token ids, empty and huge text, arbitrary characters in
strings, unknown models, duplicate request ids, missing / bad / wrong-role tokens — get only
defined status codes; no worker dies; afterwards no request holds a page and the router holds no
flow (its memory does not grow with the requests)."""

from __future__ import annotations

import threading
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from baton_pb.v1 import common_pb2, public_pb2, public_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import WORKER_ARGS, list_workers, wait_pools_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]
EXAMPLES = 2000
MAX_TOKENS_LIMIT = 3  # cheap: a valid request generates at most 3 tokens
MAX_PROMPT_BYTES = 32 * 1024
TOKENS = {"user": "fuzz-user-token", "admin": "fuzz-admin-token"}
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
INT32 = st.integers(-(2**31), 2**31 - 1)
WILD_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
SOME_TEXT = st.text(max_size=40)  # any code point: control characters, NUL, emoji, RTL marks


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("fuzz") / "tokens"
    tokens.write_text(f"{TOKENS['user']} acme user\n{TOKENS['admin']} ops admin\n")
    router = RouterConfig(
        model="",
        listen="127.0.0.1:0",
        local_prefill_threshold=24,  # both paths: short prompts colocated, longer ones disaggregated
        max_tokens_limit=MAX_TOKENS_LIMIT,
        default_max_tokens=2,
        max_prompt_bytes=MAX_PROMPT_BYTES,
        auth_tokens_file=str(tokens),
    )
    with LocalCluster(ClusterSpec(tiny_model, worker_args=WORKER_ARGS, router=router)) as running:
        yield running


def _sampling() -> st.SearchStrategy[common_pb2.SamplingParams]:
    small = st.one_of(st.integers(1, MAX_TOKENS_LIMIT), INT32)
    optional = {
        "temperature": st.one_of(st.just(0.0), WILD_FLOATS),
        "top_k": INT32,
        "top_p": WILD_FLOATS,
        "min_p": WILD_FLOATS,
        "repetition_penalty": WILD_FLOATS,
        "presence_penalty": WILD_FLOATS,
        "frequency_penalty": WILD_FLOATS,
        "seed": st.integers(-(2**63), 2**63 - 1),
        "max_tokens": small,
        "logprobs": st.one_of(st.integers(0, 3), INT32),
    }
    fields = st.fixed_dictionaries(
        {},
        optional={
            **optional,
            "stop_token_ids": st.lists(INT32, max_size=4),
            "stop": st.lists(SOME_TEXT, max_size=3),
            "ignore_eos": st.booleans(),
        },
    )
    return fields.map(lambda kw: common_pb2.SamplingParams(**kw))


def _prompt(request: public_pb2.GenerateRequest, data) -> None:
    kind = data.draw(st.sampled_from(["none", "text", "huge text", "chat", "token_ids", "long token_ids"]))
    if kind == "text":
        request.text = data.draw(st.text(max_size=80))
    elif kind == "huge text":
        request.text = "x" * data.draw(st.integers(MAX_PROMPT_BYTES, 2 * MAX_PROMPT_BYTES))
    elif kind == "chat":
        roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), SOME_TEXT)
        messages = data.draw(st.lists(st.tuples(roles, SOME_TEXT), max_size=4))
        request.chat.SetInParent()  # an empty chat is a chat too
        request.chat.messages.extend(common_pb2.ChatMessage(role=r, content=c) for r, c in messages)
        json_ish = st.one_of(SOME_TEXT, st.just('{"enable_thinking": false}'), st.just('[{"type": "function"}]'))
        request.chat.tools_json = data.draw(json_ish)
        request.chat.template_kwargs_json = data.draw(json_ish)
        if messages and data.draw(st.booleans()):
            call = common_pb2.ToolCall(id=data.draw(SOME_TEXT), name=data.draw(SOME_TEXT), arguments=data.draw(json_ish))
            request.chat.messages[-1].tool_calls.append(call)
            request.chat.messages.add(role="tool", content="r", tool_call_id=data.draw(st.sampled_from([call.id, "other"])))
    elif kind == "token_ids":
        ids = st.one_of(st.integers(0, 1100), INT32)  # vocabulary is ~1k: in and out of range
        request.token_ids.SetInParent()
        request.token_ids.ids.extend(data.draw(st.lists(ids, max_size=48)))
    elif kind == "long token_ids":
        request.token_ids.ids.extend([7] * data.draw(st.integers(30_000, 40_000)))  # past the context


def _metadata(data) -> tuple:
    who = data.draw(st.sampled_from(["user", "user", "user", "admin", "none", "garbage"]))
    if who == "none":
        return ()
    if who == "garbage":
        return (("authorization", "Bearer " + data.draw(st.text(alphabet="abcdefghij-_", max_size=20))),)
    return (("authorization", f"Bearer {TOKENS[who]}"),)


class Outcomes:
    def __init__(self) -> None:
        self.codes: Counter[grpc.StatusCode] = Counter()
        self.undefined: list[tuple] = []
        self.lock = threading.Lock()

    def call(self, what: str, fn, request, metadata) -> None:
        try:
            result = fn(request, timeout=60, metadata=metadata)
            if not hasattr(result, "ByteSize"):
                list(result)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        with self.lock:
            self.codes[code] += 1
            if code not in DEFINED:
                self.undefined.append((what, code, details, str(request)[:300]))


def test_fuzz_public_api(cluster):
    workers_before = {w.worker_id: w.epoch for w in list_workers(cluster, metadata=_admin())}
    outcomes = Outcomes()
    channel = grpc.insecure_channel(cluster.address)
    stub = public_pb2_grpc.BatonStub(channel)
    served_model = cluster.router.core.model_id
    rss_before = _rss_bytes()

    @seed(20261126)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one_request(data) -> None:
        metadata = _metadata(data)
        rpc = data.draw(st.sampled_from(["generate"] * 8 + ["abort", "model info"]))
        if rpc == "abort":
            request = public_pb2.AbortRequest(request_id=data.draw(SOME_TEXT))
            outcomes.call(rpc, stub.Abort, request, metadata)
            return
        if rpc == "model info":
            outcomes.call(rpc, stub.GetModelInfo, public_pb2.GetModelInfoRequest(), metadata)
            return
        request = public_pb2.GenerateRequest(
            request_id=data.draw(st.one_of(st.just(""), st.sampled_from(["dup-1", "dup-2"]), SOME_TEXT)),
            session_id=data.draw(st.one_of(st.just(""), SOME_TEXT)),
            model=data.draw(st.one_of(st.just(""), st.just(served_model), SOME_TEXT)),
            tenant=data.draw(st.one_of(st.just(""), st.just("acme"), SOME_TEXT)),
            explain=data.draw(st.booleans()),
            priority=data.draw(INT32),
        )
        if data.draw(st.booleans()):
            request.sampling.CopyFrom(data.draw(_sampling()))
        _prompt(request, data)
        outcomes.call(rpc, stub.Generate, request, metadata)

    one_request()
    _duplicate_request_ids_at_once(stub, outcomes)
    channel.close()

    total = sum(outcomes.codes.values())
    print(
        f"\nfuzz: {total} malformed requests; status codes: { {c.name: n for c, n in outcomes.codes.items()} }"
    )
    assert total >= EXAMPLES
    assert not outcomes.undefined, outcomes.undefined[:5]
    assert outcomes.codes[grpc.StatusCode.OK] > 0 and outcomes.codes[grpc.StatusCode.INVALID_ARGUMENT] > 0
    workers_after = {w.worker_id: w.epoch for w in list_workers(cluster, metadata=_admin())}
    assert workers_after == workers_before, "a worker died or restarted"
    assert all(member.worker_id in workers_after for member in cluster.pool.members())
    wait_pools_idle(cluster, workers=lambda: list_workers(cluster, metadata=_admin()))
    core = cluster.router.core
    assert not core._flows and core._in_flight == 0, "the router still holds flows"
    grown = _rss_bytes() - rss_before
    print(f"fuzz: router process RSS grew by {grown / 2**20:.0f} MiB")
    assert grown < 300 * 2**20, f"router RSS grew by {grown / 2**20:.0f} MiB"


def _duplicate_request_ids_at_once(stub, outcomes: Outcomes) -> None:
    """The same request id, several times concurrently: one runs, the others are told why."""
    request = public_pb2.GenerateRequest(request_id="same-id", token_ids=common_pb2.TokenIds(ids=[5] * 40))
    request.sampling.max_tokens = MAX_TOKENS_LIMIT
    metadata = (("authorization", f"Bearer {TOKENS['user']}"),)
    threads = [
        threading.Thread(target=outcomes.call, args=("dup", stub.Generate, request, metadata))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def _admin() -> tuple:
    return (("authorization", f"Bearer {TOKENS['admin']}"),)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
