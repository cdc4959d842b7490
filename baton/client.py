"""A small Python client for the public API: one `generate` call, collected, with timings."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from baton_pb.v1 import common_pb2, public_pb2, public_pb2_grpc
from rpc.grpc_server import CHANNEL_OPTIONS


@dataclass
class GenerateResult:
    request_id: str = ""
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    fetched_tokens: int = 0
    prefill_worker: str = ""
    decode_worker: str = ""
    route_reason: str = ""
    explain: str = ""
    ttft_s: float = 0.0
    e2e_s: float = 0.0


class BatonClient:
    def __init__(self, address: str, token: str = "", channel: grpc.Channel | None = None) -> None:
        self.channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = public_pb2_grpc.BatonStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def generate(
        self,
        *,
        session_id: str = "",
        text: str | None = None,
        token_ids: list[int] | None = None,
        chat: list[dict[str, Any]] | None = None,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        tenant: str = "",
        request_id: str = "",
        explain: bool = False,
        timeout_s: float = 300.0,
        **sampling,
    ) -> GenerateResult:
        request = build_request(
            session_id, text, token_ids, chat, tenant, request_id, explain, sampling, tools, template_kwargs
        )
        result = GenerateResult()
        started = time.perf_counter()
        for response in self.stub.Generate(request, timeout=timeout_s, metadata=self.metadata):
            if response.request_id:
                result.request_id = response.request_id
            if response.HasField("route"):
                result.prefill_worker = response.route.prefill_worker
                result.decode_worker = response.route.decode_worker
                result.route_reason = response.route.reason
                result.explain = response.route.explain
            if response.token_ids and not result.token_ids:
                result.ttft_s = time.perf_counter() - started
            result.token_ids.extend(response.token_ids)
            result.text += response.text
            if response.finish_reason:
                result.finish_reason = response.finish_reason
                result.prompt_tokens = response.usage.prompt_tokens
                result.cached_tokens = response.usage.cached_tokens
                result.fetched_tokens = response.usage.fetched_tokens
        result.e2e_s = time.perf_counter() - started
        return result

    def close(self) -> None:
        self.channel.close()


def build_request(
    session_id, text, token_ids, chat, tenant, request_id, explain, sampling, tools=None, template_kwargs=None
) -> public_pb2.GenerateRequest:
    request = public_pb2.GenerateRequest(
        session_id=session_id, tenant=tenant, request_id=request_id, explain=explain,
        sampling=common_pb2.SamplingParams(**sampling),
    )  # fmt: skip
    if text is not None:
        request.text = text
    elif token_ids is not None:
        request.token_ids.ids.extend(token_ids)
    elif chat is not None:
        request.chat.CopyFrom(chat_to_proto(chat, tools, template_kwargs))
    return request


def chat_to_proto(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, template_kwargs: dict[str, Any] | None = None
) -> common_pb2.ChatMessages:
    """OpenAI-style message dicts (tool_calls with function name + arguments, tool_call_id, name,
    reasoning_content) to the wire form; arguments given as objects are sent as JSON text."""
    chat = common_pb2.ChatMessages(
        tools_json=json.dumps(tools) if tools else "", template_kwargs_json=json.dumps(template_kwargs) if template_kwargs else ""
    )
    for m in messages:
        message = chat.messages.add(
            role=m["role"], content=m.get("content") or "", tool_call_id=m.get("tool_call_id", ""),
            name=m.get("name", ""), reasoning_content=m.get("reasoning_content") or "",
        )  # fmt: skip
        for call in m.get("tool_calls") or []:
            function = call.get("function", call)
            arguments = function.get("arguments", "")
            message.tool_calls.add(
                id=call.get("id", ""), type=call.get("type", "function"), name=function["name"],
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )  # fmt: skip
    return chat
