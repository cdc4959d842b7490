"""The HTTP layer's own behaviour through the official `openai` client, over a router core that
replays scripted model output (a random model never writes a tool call): tool calls of both
families streamed as deltas and whole, `finish_reason` "tool_calls", the reasoning split, 429 with
`retry-after`, /health 503 without workers, an error after the stream started."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import requests

from baton_pb.v1 import common_pb2, public_pb2
from engine.tokenizer import Tokenizer
from router.config import RouterConfig
from router.openai.server import start_http
from rpc.auth import TokenAuth
from rpc.errors import AdmissionRejected, ServiceUnavailable
from tests.helpers.chat_templates import with_template

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}}}}}]  # fmt: skip
OUTPUTS = {
    "qwen3_next": '<think>\nweather needed\n</think>\n\nChecking.\n<tool_call>\n{"name": "get_weather", '
                  '"arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
    "qwen3_5": "Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
               "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
}  # fmt: skip


class ScriptedCore:
    """RouterCore's surface that the HTTP layer uses; `generate` replays `script` in small pieces."""

    def __init__(self, model_dir: Path) -> None:
        self.config = RouterConfig(model=str(model_dir))
        self.model_name = model_dir.name
        self.model_id = "xxh3:scripted"
        self.max_context = 4096
        self.tokenizer = Tokenizer.from_dir(model_dir)
        self.script = ""
        self.failure: BaseException | None = None
        self.fail_after = -1
        self.registry = ScriptedRegistry()
        self.aborted: list[str] = []
        self.prompts: list[list[int]] = []

    def generate(self, request: public_pb2.GenerateRequest, tenant: str):
        self.prompts.append(list(request.token_ids.ids))
        if self.failure is not None and self.fail_after < 0:
            raise self.failure
        pieces = [self.script[i : i + 3] for i in range(0, len(self.script), 3)]
        for number, piece in enumerate(pieces):
            if number == self.fail_after:
                raise self.failure
            yield public_pb2.GenerateResponse(request_id=request.request_id, token_ids=[1], text=piece)
        usage = common_pb2.Usage(prompt_tokens=len(request.token_ids.ids), completion_tokens=len(pieces), cached_tokens=0)
        yield public_pb2.GenerateResponse(request_id=request.request_id, finish_reason="stop", usage=usage)

    def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True


class ScriptedRegistry:
    def __init__(self) -> None:
        self.decode = ["decode-0"]

    def workers(self, role: str = "", routable: bool = False) -> list:
        return self.decode


@pytest.fixture(params=["qwen3_next", "qwen3_5"])
def served(request, tiny_model, tmp_path):
    core = ScriptedCore(with_template(Path(tiny_model), request.param, tmp_path))
    core.script = OUTPUTS[request.param]
    http = start_http(core, TokenAuth({}), "127.0.0.1:0", 1 << 20)
    client = openai.OpenAI(base_url=f"http://{http.address}/v1", api_key="x", max_retries=0)
    yield core, client, http.address
    http.stop()


def _ask(client, **kwargs):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}],
                                          tools=TOOLS, **kwargs)  # fmt: skip


def test_tool_call_whole_and_streamed(served):
    core, client, _ = served
    answer = _ask(client)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    assert choice.message.content.strip() == "Checking."
    chunks = list(_ask(client, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    arguments = "".join(t.function.arguments or "" for d in deltas for t in d.tool_calls or [])
    assert json.loads(arguments) == {"city": "Paris", "days": 2}
    pieces = [t for d in deltas for t in d.tool_calls or [] if t.function.arguments]
    assert len(pieces) >= 2, "arguments arrive as several deltas"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    names = [t.function.name for d in deltas for t in d.tool_calls or [] if t.function.name]
    assert names == ["get_weather"]


FORCED = {  # family: (the whole call, its opening for "required", its opening for a named function)
    "qwen3_next": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
                   '<tool_call>\n{"name": ', '<tool_call>\n{"name": "get_weather", "arguments": '),
    "qwen3_5": ("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>",
                "<tool_call>\n", "<tool_call>\n<function=get_weather>\n"),
}  # fmt: skip


@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_tool_choice_opens_the_call_in_the_prompt(served, choice):
    core, client, _ = served
    family = "qwen3_5" if "<function=" in core.tokenizer.chat_template else "qwen3_next"
    whole, required, named = FORCED[family]
    opening = named if choice == "named" else required
    core.script = whole[len(opening) :]  # the model continues after the opening the router wrote
    tool_choice = {"type": "function", "function": {"name": "get_weather"}} if choice == "named" else "required"
    for stream in (False, True):
        answer = _ask(client, tool_choice=tool_choice, stream=stream)
        if stream:
            deltas = [c.choices[0].delta for c in answer if c.choices]
            calls = [t for d in deltas for t in d.tool_calls or []]
            name, arguments = calls[0].function.name, "".join(t.function.arguments or "" for t in calls)
        else:
            [call] = answer.choices[0].message.tool_calls
            name, arguments = call.function.name, call.function.arguments
        assert name == "get_weather" and json.loads(arguments) == {"city": "Oslo"}
        tail = core.tokenizer.decode(core.prompts[-1][-30:], skip_special_tokens=False)
        assert tail.endswith(opening), tail


def test_forced_call_closes_an_open_thinking_block(served):
    core, client, _ = served
    if "<function=" not in core.tokenizer.chat_template:
        pytest.skip("only Qwen3.5's template opens <think> in the prompt")
    whole, _, named = FORCED["qwen3_5"]
    core.script = whole[len(named) :]
    answer = _ask(client, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                  extra_body={"chat_template_kwargs": {"enable_thinking": True}})  # fmt: skip
    assert answer.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert getattr(answer.choices[0].message, "reasoning_content", None) is None
    tail = core.tokenizer.decode(core.prompts[-1][-40:], skip_special_tokens=False)
    assert tail.endswith("<think>\n</think>\n\n" + named), tail


def test_tool_choice_none_keeps_the_text(served):
    core, client, _ = served
    answer = _ask(client, tool_choice="none")
    assert answer.choices[0].message.tool_calls is None
    assert "<tool_call>" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"


def test_reasoning_of_the_scripted_output(served):
    core, client, _ = served
    if "<think>" in core.script:  # Qwen3-Next: the model opens the block itself
        message = _ask(client).choices[0].message
    else:  # Qwen3.5 with thinking on: the template opened <think>; the output only closes it
        core.script = "weather needed\n</think>\n\n" + core.script
        message = _ask(client, extra_body={"chat_template_kwargs": {"enable_thinking": True}}).choices[0].message
    assert message.reasoning_content == "weather needed"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 2}


def test_overload_is_429_with_retry_after(served):
    core, client, address = served
    core.failure = AdmissionRejected("router is full (256 requests in flight)", retry_after_ms=2500)
    with pytest.raises(openai.RateLimitError) as error:
        _ask(client)
    assert error.value.response.headers["retry-after"] == "3"
    assert "router is full" in error.value.message


def test_error_after_the_stream_started_is_an_event(served):
    core, client, address = served
    core.failure, core.fail_after = ServiceUnavailable("every decode worker died"), 3
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    response = requests.post(f"http://{address}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["message"] == "every decode worker died"


def test_health_is_503_without_a_decode_worker(served):
    core, client, address = served
    assert requests.get(f"http://{address}/health", timeout=10).status_code == 200
    core.registry.decode = []
    assert requests.get(f"http://{address}/health", timeout=10).status_code == 503
