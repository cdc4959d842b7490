"""`POST /v1/chat/completions` and `/v1/completions` bodies → the router's `GenerateRequest`.

Every field is type-checked (a wrong type is a 400 naming it). Supported beyond the basics:
`tools`, `tool_choice` "auto" (default when tools are given), "none" (tool-call text stays
content), "required" and a named function (the call's opening is written into the prompt, so the
model continues inside a call; there is no constrained decoding, so its arguments are the model's).
`n` must be 1. Sessions: the `x-session-id` header, else the `user` field."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from baton_pb.v1 import common_pb2, public_pb2
from router.openai.errors import BadRequest
from router.openai.fields import check, need, number, optional

ROLES = ("system", "developer", "user", "assistant", "tool")
SESSION_HEADER = "x-session-id"
REQUIRED = "*"
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What the HTTP layer keeps besides the GenerateRequest."""

    generate: public_pb2.GenerateRequest
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    parse_tools: bool
    tools: tuple = ()
    forced_call: str = ""  # "": the model chooses; REQUIRED: some call; else the function's name


def chat_request(body: dict, session_header: str) -> ApiRequest:
    messages = need(body, "messages", list)
    if not messages:
        raise BadRequest("'messages' must not be empty", "messages")
    tools = _tools(optional(body, "tools", list, []))
    choice = _tool_choice(body.get("tool_choice"), tools)
    chat = common_pb2.ChatMessages(messages=_messages(messages))
    if tools:
        chat.tools_json = json.dumps(tools)
    response_format = optional(body, "response_format", dict, {})
    if optional(response_format, "type", str, "text", where="response_format.") != "text":
        raise BadRequest("only response_format 'text' is supported (no constrained decoding)", "response_format")
    kwargs = optional(body, "chat_template_kwargs", dict)
    if kwargs:
        chat.template_kwargs_json = json.dumps(kwargs)
    generate = _base(body, session_header)
    generate.chat.CopyFrom(chat)
    request = _api_request(body, generate, parse_tools=bool(tools) and choice != "none", tools=tuple(tools))
    forced = {"none": "", "auto": "", "required": REQUIRED}.get(choice, choice)
    return dataclasses.replace(request, forced_call=forced)


def completion_request(body: dict, session_header: str) -> ApiRequest:
    prompt = need(body, "prompt", (str, list))
    generate = _base(body, session_header)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        generate.text = prompt
    elif all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        generate.token_ids.ids.extend(prompt)
    else:
        raise BadRequest("'prompt' must be a string, an array of token ids, or a batch of one of them", "prompt")
    if optional(body, "echo", bool, False):
        raise BadRequest("'echo' is not supported", "echo")
    if optional(body, "suffix", str):
        raise BadRequest("'suffix' is not supported", "suffix")
    logprobs = optional(body, "logprobs", int)
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"'logprobs' must be between 0 and {MAX_TOP_LOGPROBS}", "logprobs")
    request = _api_request({**body, "logprobs": logprobs is not None, "top_logprobs": logprobs or 0}, generate,
                           parse_tools=False)  # fmt: skip
    return request


def _base(body: dict, session_header: str) -> public_pb2.GenerateRequest:
    model = optional(body, "model", str, "")
    user = optional(body, "user", str, "")
    n = optional(body, "n", int, 1)
    if n != 1:
        raise BadRequest("only 'n' = 1 is supported", "n")
    return public_pb2.GenerateRequest(
        model=model, session_id=session_header or user, sampling=_sampling(body)
    )


def _api_request(body: dict, generate: public_pb2.GenerateRequest, *, parse_tools: bool, tools=()) -> ApiRequest:
    stream = optional(body, "stream", bool, False)
    options = optional(body, "stream_options", dict, {})
    include_usage = bool(optional(options, "include_usage", bool, False, where="stream_options."))
    if options and not stream:
        raise BadRequest("'stream_options' is only allowed with 'stream': true", "stream_options")
    logprobs = optional(body, "logprobs", bool, False)
    top = optional(body, "top_logprobs", int, 0)
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs")
    if top and not logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    if logprobs:
        generate.sampling.logprobs = top
    return ApiRequest(generate, stream, include_usage, logprobs, top, parse_tools, tools)


def _sampling(body: dict) -> common_pb2.SamplingParams:
    sampling = common_pb2.SamplingParams()
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2),
                            ("frequency_penalty", -2, 2)):  # fmt: skip
        value = number(body, name, low=low, high=high)
        if value is not None:
            setattr(sampling, name, value)
    if optional(body, "ignore_eos", bool, False):  # vLLM's extension, for benchmarks
        sampling.ignore_eos = True
    seed = optional(body, "seed", int)
    if seed is not None:
        sampling.seed = seed
    limit = optional(body, "max_completion_tokens", int)
    limit = optional(body, "max_tokens", int) if limit is None else limit
    if limit is not None:
        if limit < 1:
            raise BadRequest("'max_tokens' must be at least 1", "max_tokens")
        sampling.max_tokens = min(limit, 2**31 - 1)
    stop = optional(body, "stop", (str, list))
    stops = [stop] if isinstance(stop, str) else stop or []
    for item in stops:
        check(item, "stop[]", str)
    if len(stops) > 4:
        raise BadRequest("'stop' takes at most 4 strings", "stop")
    sampling.stop.extend(stops)
    return sampling


def _messages(messages: list) -> list[common_pb2.ChatMessage]:
    result, call_ids = [], set()
    for number_, raw in enumerate(messages):
        where = f"messages[{number_}]."
        message = check(raw, f"messages[{number_}]", dict)
        role = need(message, "role", str, where=where)
        if role not in ROLES:
            raise BadRequest(f"unknown role {role!r} in messages[{number_}]; expected one of {', '.join(ROLES)}", where + "role")
        out = common_pb2.ChatMessage(role="system" if role == "developer" else role)
        out.content = _content(message.get("content"), where, required=role != "assistant")
        out.name = optional(message, "name", str, "", where=where)
        if role == "assistant":
            out.reasoning_content = optional(message, "reasoning_content", str, "", where=where)
            for index, call in enumerate(optional(message, "tool_calls", list, [], where=where)):
                out.tool_calls.append(_tool_call(call, f"{where}tool_calls[{index}]."))
                call_ids.add(out.tool_calls[-1].id)
        if role == "tool":
            out.tool_call_id = need(message, "tool_call_id", str, where=where)
            if out.tool_call_id not in call_ids:
                raise BadRequest(f"messages[{number_}] answers tool call {out.tool_call_id!r}, which no earlier assistant message made", where + "tool_call_id")  # noqa: E501
        result.append(out)
    return result


def _content(content, where: str, *, required: bool) -> str:
    if content is None:
        if required:
            raise BadRequest(f"'{where}content' is required", where + "content")
        return ""
    if isinstance(content, str):
        return content
    parts = check(content, "content", list, where=where)
    texts = []
    for index, part in enumerate(parts):
        part_where = f"{where}content[{index}]."
        check(part, f"content[{index}]", dict, where=where)
        if need(part, "type", str, where=part_where) != "text":
            raise BadRequest(f"only text content parts are supported, not {part['type']!r}", part_where + "type")
        texts.append(need(part, "text", str, where=part_where))
    return "".join(texts)


def _tool_call(call, where: str) -> common_pb2.ToolCall:
    check(call, where.rstrip("."), dict)
    call_type = optional(call, "type", str, "function", where=where)
    if call_type != "function":
        raise BadRequest(f"tool call type {call_type!r} is not supported", where + "type")
    function = need(call, "function", dict, where=where)
    arguments = optional(function, "arguments", str, "{}", where=where + "function.")
    try:
        json.loads(arguments or "{}")
    except json.JSONDecodeError as error:
        raise BadRequest(f"'{where}function.arguments' is not JSON: {error}", where + "function.arguments") from error
    return common_pb2.ToolCall(
        id=need(call, "id", str, where=where), type="function",
        name=need(function, "name", str, where=where + "function."), arguments=arguments,
    )  # fmt: skip


def _tools(tools: list) -> list[dict]:
    for index, tool in enumerate(tools):
        where = f"tools[{index}]."
        check(tool, f"tools[{index}]", dict)
        if optional(tool, "type", str, "function", where=where) != "function":
            raise BadRequest("only function tools are supported", where + "type")
        function = need(tool, "function", dict, where=where)
        need(function, "name", str, where=where + "function.")
        optional(function, "description", str, where=where + "function.")
        optional(function, "parameters", dict, where=where + "function.")
    return tools


def _tool_choice(choice, tools: list[dict]) -> str:
    """"none" | "auto" | "required" | the name of the function to call."""
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise BadRequest("tool_choice 'required' needs 'tools'", "tool_choice")
        return choice
    if isinstance(choice, dict):
        function = need(choice, "function", dict, where="tool_choice.")
        name = need(function, "name", str, where="tool_choice.function.")
        if name not in {t["function"]["name"] for t in tools}:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
        return name
    raise BadRequest("'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}", "tool_choice")  # noqa: E501
