"""Turning a public GenerateRequest into validated prompt token ids and sampling params.

`render_chat` is the one way a chat becomes ids (gRPC `Generate` and the OpenAI API both use it):
the messages, tools, tool calls and results, and template kwargs are checked (ValueError with a
message for bad input, which the servers turn into INVALID_ARGUMENT), converted to the OpenAI-style
dicts that chat templates read, and rendered with the checkpoint's template (engine/tokenizer.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from baton_pb.v1 import common_pb2, public_pb2
from engine.tokenizer import Tokenizer
from rpc.convert import sampling_from_proto


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    request_id: str
    session_id: str
    tenant: str
    prompt: list[int]
    params: object  # engine SamplingParams
    internal_id: str = ""  # the id workers see (server-made: tenants' ids never meet there)

    @property
    def worker_request_id(self) -> str:
        return self.internal_id or self.request_id

    @property
    def session_key(self) -> str:
        """The session as the router keeps it: scoped to the tenant, like everything a tenant names."""
        return f"{self.tenant}\x1f{self.session_id}" if self.session_id else ""


ROLES = ("system", "user", "assistant", "tool")
RESERVED_TEMPLATE_KWARGS = ("messages", "tools", "documents", "add_generation_prompt")
# The tokenizer's own special tokens: transformers refuses them as template kwargs (a duplicate keyword)
SPECIAL_TOKEN_KWARGS = (
    "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token",
    "additional_special_tokens",
)  # fmt: skip


def render_chat(
    tokenizer: Tokenizer, chat: common_pb2.ChatMessages, *, allow_special_tokens_in_content: bool = False
) -> list[int]:
    """Prompt ids of a chat, rendered with the checkpoint's chat template (transformers' semantics).
    Control tokens written in the input are encoded as text unless `allow_special_tokens_in_content`."""
    messages = chat_messages(chat)
    tools = _parse_tools(chat.tools_json)
    template_kwargs = _parse_template_kwargs(chat.template_kwargs_json)
    add_generation_prompt = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    return tokenizer.encode_chat(
        messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        template_kwargs=template_kwargs,
        allow_special_tokens_in_content=allow_special_tokens_in_content,
    )


def chat_messages(chat: common_pb2.ChatMessages) -> list[dict[str, Any]]:
    """The messages as OpenAI-style dicts; tool-call arguments parsed into objects (templates read them
    as mappings). Raises ValueError naming the first bad message."""
    if not chat.messages:
        raise ValueError("chat has no messages")
    messages: list[dict[str, Any]] = []
    call_ids: set[str] = set()
    for index, m in enumerate(chat.messages):
        where = f"messages[{index}]"
        if m.role not in ROLES:
            raise ValueError(f"{where}: unknown chat role {m.role!r}; expected one of {ROLES}")
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            if m.role != "assistant":
                raise ValueError(f"{where}: only assistant messages carry tool_calls (role is {m.role!r})")
            message["tool_calls"] = [_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(m.tool_calls)]
            call_ids.update(call.id for call in m.tool_calls if call.id)
        if m.role == "tool":
            if not m.tool_call_id:
                raise ValueError(f"{where}: a tool message needs the tool_call_id of the call it answers")
            if m.tool_call_id not in call_ids:
                raise ValueError(f"{where}: tool_call_id {m.tool_call_id!r} answers no earlier assistant tool call")
            message["tool_call_id"] = m.tool_call_id
        elif m.tool_call_id:
            raise ValueError(f"{where}: tool_call_id is only for tool messages (role is {m.role!r})")
        if m.name:
            message["name"] = m.name
        if m.reasoning_content:
            if m.role != "assistant":
                raise ValueError(f"{where}: reasoning_content is only for assistant messages")
            message["reasoning_content"] = m.reasoning_content
        messages.append(message)
    return messages


def _tool_call(call: common_pb2.ToolCall, where: str) -> dict[str, Any]:
    if call.type not in ("", "function"):
        raise ValueError(f"{where}: unknown tool call type {call.type!r}; expected 'function'")
    if not call.name:
        raise ValueError(f"{where}: a tool call needs the function name")
    arguments: Any = {}
    if call.arguments.strip():
        try:
            arguments = json.loads(call.arguments)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: arguments are not valid JSON: {error}") from error
        if not isinstance(arguments, dict):
            raise ValueError(f"{where}: arguments must be a JSON object, got {type(arguments).__name__}")
    result: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": arguments}}
    return {"id": call.id, **result} if call.id else result


def _parse_tools(text: str) -> list[dict[str, Any]] | None:
    if not text.strip():
        return None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"tools_json is not valid JSON: {error}") from error
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise ValueError("tools_json must be a JSON array of tool objects")
    return tools or None


def _parse_template_kwargs(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"template_kwargs_json is not valid JSON: {error}") from error
    if not isinstance(kwargs, dict):
        raise ValueError("template_kwargs_json must be a JSON object")
    reserved = sorted(set(kwargs) & set(RESERVED_TEMPLATE_KWARGS))
    if reserved:
        raise ValueError(f"template_kwargs_json may not set {reserved}: they have their own fields")
    special = sorted(set(kwargs) & set(SPECIAL_TOKEN_KWARGS))
    if special:
        raise ValueError(f"template_kwargs_json may not set {special}: the tokenizer's special tokens are fixed")
    return kwargs


def prompt_token_ids(
    request: public_pb2.GenerateRequest,
    tokenizer: Tokenizer,
    vocab_size: int,
    *,
    allow_special_tokens_in_content: bool = False,
) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise ValueError("prompt is empty: set one of text, chat or token_ids")
    if kind == "text":
        if not request.text:
            raise ValueError("prompt is empty")
        ids = tokenizer.encode(request.text)
    elif kind == "chat":
        ids = render_chat(tokenizer, request.chat, allow_special_tokens_in_content=allow_special_tokens_in_content)
    else:
        # numpy reads the repeated field as a buffer: ~100x faster than iterating it in Python
        array = np.array(request.token_ids.ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= vocab_size):
            bad = int(array[(array < 0) | (array >= vocab_size)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
        ids = array.tolist()
    if not ids:
        raise ValueError("prompt is empty after tokenization")
    return ids


def prepare(
    request: public_pb2.GenerateRequest,
    tokenizer: Tokenizer,
    *,
    request_id: str,
    tenant: str,
    vocab_size: int,
    max_context: int,
    default_max_tokens: int,
    max_tokens_limit: int,
    allow_special_tokens_in_content: bool = False,
) -> PreparedRequest:
    prompt = prompt_token_ids(
        request, tokenizer, vocab_size, allow_special_tokens_in_content=allow_special_tokens_in_content
    )
    if len(prompt) >= max_context:
        raise ValueError(f"prompt has {len(prompt)} tokens; the context window is {max_context}")
    params = sampling_from_proto(request.sampling, default_max_tokens=default_max_tokens)
    if params.max_tokens > max_tokens_limit:
        raise ValueError(f"max_tokens {params.max_tokens} exceeds the limit {max_tokens_limit}")
    params.validate(vocab_size)
    return PreparedRequest(request_id, request.session_id, tenant, prompt, params)

