"""The OpenAI-compatible HTTP API, driven by the official `openai` client (and raw HTTP for bad
input): prompts rendered like transformers renders them, greedy output equal to the gRPC API's,
streaming equal to non-streaming, cached tokens on turn 2, the reasoning split, usage, logprobs,
errors as OpenAI error objects, and a client that disconnects freeing its pages."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import openai
import pytest
import requests

from baton_pb.v1 import admin_pb2, admin_pb2_grpc, common_pb2, public_pb2, public_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.helpers.agent_session import TOOLS, agent_messages, reference_ids
from tests.helpers.chat_templates import with_template

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
TOKEN, TOKEN_B, ADMIN = "tok-user-a", "tok-user-b", "tok-admin"
GREEDY = {"temperature": 0.0, "max_tokens": 8}


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    model = with_template(Path(tiny_model), "qwen3_5", root)
    tokens = root / "tokens"
    tokens.write_text(f"{TOKEN} tenant-a user\n{TOKEN_B} tenant-b user\n{ADMIN} ops admin\n")
    router = RouterConfig(model="", listen="127.0.0.1:0", http_listen="127.0.0.1:0", local_prefill_threshold=0,
                          auth_tokens_file=str(tokens))  # fmt: skip
    with LocalCluster(ClusterSpec(str(model), router=router)) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{cluster.router.http_address}/v1", api_key=TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def reference_tokenizer(cluster):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(cluster.router.core.config.model)


def _model(cluster) -> str:
    return cluster.router.core.model_name  # the served name; the weights digest is accepted too


def test_health_and_models(cluster, client):
    health = requests.get(f"http://{cluster.router.http_address}/health", timeout=10)
    assert health.status_code == 200
    assert [m.id for m in client.models.list().data] == [_model(cluster)]
    assert client.models.retrieve(_model(cluster)).id == _model(cluster)


def test_agent_loop_with_two_tools(cluster, client, reference_tokenizer):
    session = {"x-session-id": "agent-loop-1"}
    for turn in (1, 2):
        messages = agent_messages(turn)
        expected = reference_ids(reference_tokenizer, messages)
        answer = client.chat.completions.create(model=_model(cluster), messages=messages, tools=TOOLS,
                                                extra_headers=session, **GREEDY)  # fmt: skip
        assert answer.usage.prompt_tokens == len(expected), "the server renders the prompt like transformers"
        # the same prompt as token ids through /v1/completions: the same greedy text
        plain = client.completions.create(model=_model(cluster), prompt=expected, **GREEDY)
        assert answer.choices[0].message.content == plain.choices[0].text
        assert answer.usage.completion_tokens == GREEDY["max_tokens"]
        assert answer.choices[0].finish_reason == "length"
        if turn == 2:
            # turn 2 extends turn 1: its prompt was cached
            assert answer.usage.prompt_tokens_details.cached_tokens >= 16
            assert answer.usage.prompt_tokens_details.cached_tokens < answer.usage.prompt_tokens
    sessions = cluster.router.core.sessions
    # sessions are tenant-scoped ("<tenant>\x1f<session>"; this client's token is tenant-a's)
    assert sessions.get("tenant-a\x1fagent-loop-1").turns >= 2, "x-session-id is the session"
    client.chat.completions.create(model=_model(cluster), messages=agent_messages(1), user="user-7", **GREEDY)
    assert sessions.get("tenant-a\x1fuser-7") is not None, "without the header, `user` is the session"


def test_greedy_equals_grpc_and_streaming_equals_whole(cluster, client):
    messages = [{"role": "user", "content": "Say something about hybrid attention."}]
    whole = client.chat.completions.create(model=_model(cluster), messages=messages, **GREEDY)
    stream = client.chat.completions.create(model=_model(cluster), messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)  # fmt: skip
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == GREEDY["max_tokens"]
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    stub = public_pb2_grpc.BatonStub(grpc.insecure_channel(cluster.address))
    chat = common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=messages[0]["content"])])
    request = public_pb2.GenerateRequest(chat=chat, sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=8))
    responses = list(stub.Generate(request, timeout=60, metadata=(("authorization", f"Bearer {TOKEN}"),)))
    assert "".join(r.text for r in responses) == whole.choices[0].message.content
    assert responses[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions_stream_and_tenants(cluster, client):
    prompt = "The prefix cache is scoped to a tenant. " * 4
    whole = client.completions.create(model=_model(cluster), prompt=prompt, **GREEDY)
    stream = list(client.completions.create(model=_model(cluster), prompt=prompt, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))  # fmt: skip
    assert "".join(c.choices[0].text for c in stream if c.choices) == whole.choices[0].text
    assert stream[-1].usage.prompt_tokens_details.cached_tokens > 0, "the same tenant hits its cache"
    other = openai.OpenAI(base_url=client.base_url, api_key=TOKEN_B, max_retries=0)
    theirs = other.completions.create(model=_model(cluster), prompt=prompt, **GREEDY)
    assert theirs.usage.prompt_tokens_details.cached_tokens == 0, "another tenant never hits it"
    assert theirs.choices[0].text == whole.choices[0].text


def test_named_tool_choice_calls_that_function(cluster, client):
    # The random model's arguments are noise; the call itself is what tool_choice forces.
    choice = {"type": "function", "function": {"name": "search"}}
    stream = client.chat.completions.create(model=_model(cluster), messages=agent_messages(1)[:2], tools=TOOLS,
                                            tool_choice=choice, stream=True, **GREEDY)  # fmt: skip
    calls = [t for c in stream if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function.name == "search" and calls[0].id


def test_reasoning_split(cluster, client):
    messages = [{"role": "user", "content": "Think about it."}]
    thinking = client.chat.completions.create(model=_model(cluster), messages=messages,
                                              extra_body={"chat_template_kwargs": {"enable_thinking": True}}, **GREEDY)  # fmt: skip
    message = thinking.choices[0].message
    # The template opened <think> and the random model never closes it: everything is reasoning.
    assert message.reasoning_content and not message.content
    plain = client.chat.completions.create(model=_model(cluster), messages=messages,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **GREEDY)  # fmt: skip
    assert plain.choices[0].message.content and getattr(plain.choices[0].message, "reasoning_content", None) is None
    stream = client.chat.completions.create(model=_model(cluster), messages=messages, stream=True,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": True}}, **GREEDY)  # fmt: skip
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices)
    assert reasoning == message.reasoning_content


def test_logprobs_and_seeded_sampling(cluster, client):
    messages = [{"role": "user", "content": "numbers"}]
    answer = client.chat.completions.create(model=_model(cluster), messages=messages, logprobs=True, top_logprobs=2,
                                            temperature=0.9, top_p=0.95, seed=7, max_completion_tokens=6)  # fmt: skip
    entries = answer.choices[0].logprobs.content
    # the first token comes from the prefill worker, which sends no logprob with it
    assert len(entries) >= answer.usage.completion_tokens - 1 and all(e.logprob <= 0 for e in entries)
    for entry in entries:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-5  # the best is at least the sampled one
    again = client.chat.completions.create(model=_model(cluster), messages=messages, temperature=0.9, top_p=0.95,
                                           seed=7, max_completion_tokens=6)  # fmt: skip
    assert again.choices[0].message.content == answer.choices[0].message.content


def _post(cluster, path: str, body, *, token: str | None = TOKEN, content_type="application/json") -> requests.Response:
    headers = {"content-type": content_type}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(f"http://{cluster.router.http_address}{path}", data=data, headers=headers, timeout=60)


def _chat(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


BAD_FIELDS = {
    "messages": "hello", "max_tokens": "ten", "max_completion_tokens": 1.5, "temperature": "hot", "top_p": [1],
    "seed": "x", "stop": 5, "n": "1", "stream": "yes", "logprobs": 1, "top_logprobs": "2", "tools": {},
    "tool_choice": 3, "chat_template_kwargs": [], "user": 7, "model": 1, "stream_options": True,
    "response_format": "json", "presence_penalty": "x", "frequency_penalty": [], "ignore_eos": 0,
}  # fmt: skip


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
def test_every_field_of_the_wrong_type_is_a_400(cluster, field):
    response = _post(cluster, "/v1/chat/completions", _chat(**{field: BAD_FIELDS[field]}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == field


def test_bad_requests_get_their_status_and_an_error_object(cluster):
    cases = [
        (_chat(messages=[{"role": "wizard", "content": "hi"}]), 400),
        (_chat(messages=[{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]), 400),
        (_chat(n=2), 400),
        (_chat(tool_choice={"type": "function", "function": {"name": "no_such_tool"}}, tools=TOOLS), 400),
        (_chat(tool_choice="required"), 400),  # without tools
        (_chat(temperature=-1), 400),
        (_chat(max_tokens=0), 400),
        (_chat(max_tokens=10**6), 400),
        (_chat(model="no-such-model"), 404),
        ({"prompt": [10**9], "max_tokens": 2}, 400),
        ({"prompt": 5, "max_tokens": 2}, 400),
        ({"prompt": [[1, 2], [3]], "max_tokens": 2}, 400),  # a batch of two
        ({"prompt": [1, "a"], "max_tokens": 2}, 400),
        ({"max_tokens": 2}, 400),
        (_chat(messages=["hi"]), 400),
        (_chat(messages=[]), 400),
        (_chat(messages=[{"content": "no role"}]), 400),
        (_chat(messages=[{"role": "user", "content": 5}]), 400),
        (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), 400),
        (_chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": "x"}]), 400),
        (_chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]), 400),
        (_chat(tools=[{"type": "function", "function": {"description": "no name"}}]), 400),
        (_chat(chat_template_kwargs={"messages": []}), 400),
        (_chat(chat_template_kwargs={"eos_token": "x"}), 400),
        (_chat(messages=[{"role": "system", "content": "only a system turn"}]), 400),  # the template refuses
        (_chat(stop=["a", 1]), 400),
        (_chat(response_format={"type": "json_object"}), 400),
    ]
    for body, status in cases:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        response = _post(cluster, path, body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["message"]
    raw = [
        (_post(cluster, "/v1/chat/completions", b"{not json"), 400),
        (_post(cluster, "/v1/chat/completions", b"[1, 2]"), 400),
        (_post(cluster, "/v1/chat/completions", json.dumps(_chat()), content_type="text/plain"), 415),
        (_post(cluster, "/v1/chat/completions", b" " * (10 * 1024 * 1024)), 413),
        (_post(cluster, "/v1/chat/completions", _chat(), token=None), 401),
        (_post(cluster, "/v1/chat/completions", _chat(), token="wrong"), 401),
        (_post(cluster, "/v1/nowhere", _chat()), 404),
    ]
    for response, status in raw:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}
    # the router and the workers are fine
    assert requests.get(f"http://{cluster.router.http_address}/health", timeout=10).status_code == 200
    assert _post(cluster, "/v1/chat/completions", _chat()).status_code == 200
    _wait_for_free_pages(cluster)


def test_openai_client_raises_typed_errors(cluster, client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=_model(cluster), messages=[{"role": "user", "content": "x"}], n=3)
    assert "n" in error.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="bad", max_retries=0).models.list()


def test_client_disconnect_aborts_and_frees_pages(cluster):
    body = _chat(max_tokens=3000, ignore_eos=True, stream=True, temperature=0.0)
    body["messages"] = [{"role": "user", "content": "count " * 100}]
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    url = f"http://{cluster.router.http_address}/v1/chat/completions"
    with requests.post(url, data=json.dumps(body), headers=headers, timeout=60, stream=True) as response:
        assert response.status_code == 200
        lines = 0
        for line in response.iter_lines():
            lines += line.startswith(b"data: ")
            if lines >= 4:
                break  # leave mid-stream
    _wait_for_free_pages(cluster)


def test_concurrent_streams_all_finish(cluster, client):
    def one(i: int) -> str:
        stream = client.chat.completions.create(model=_model(cluster), stream=True, temperature=0.0, max_tokens=6,
                                                messages=[{"role": "user", "content": f"request {i}"}])  # fmt: skip
        return [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason][-1]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(12))) == ["length"] * 12
    _wait_for_free_pages(cluster)


def _wait_for_free_pages(cluster, timeout_s: float = 30.0) -> None:
    admin = admin_pb2_grpc.BatonAdminStub(grpc.insecure_channel(cluster.admin_address))
    metadata = (("authorization", f"Bearer {ADMIN}"),)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        loads = [w.load for w in admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10, metadata=metadata).workers]
        idle = all(x.running_requests == 0 and x.waiting_requests == 0 and x.pending_transfers == 0 for x in loads)
        if idle and all(x.total_pages - x.free_pages == x.cached_blocks for x in loads):
            return
        time.sleep(0.2)
    pytest.fail(f"pages not freed: {loads}")
