"""One OpenAI request running on the router: the blocking part in a thread (render, tokenize,
`RouterCore.generate`), the response built on the event loop (parsing, chunks, usage)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from baton_pb.v1 import public_pb2
from router.openai.bridge import ThreadStream
from router.openai.chat_request import REQUIRED, ApiRequest
from router.openai.errors import BadRequest
from router.openai.events import fold
from router.openai.output import OutputParser
from router.openai.reasoning import CLOSE as REASONING_CLOSE
from router.openai.reasoning import ReasoningParser, prompt_opens_thinking
from router.openai.responses import (
    Answer,
    chat_chunk,
    chat_completion,
    delta_for,
    finish_reason,
    text_completion,
    token_logprobs,
    usage,
    usage_chunk,
)
from router.openai.tool_parsers import ToolCallParser, call_opening, family_for_template, parameter_types
from router.prompts import render_chat

PROMPT_TAIL_TOKENS = 8  # enough to see whether the template left a `<think>` open


@dataclass(frozen=True, slots=True)
class Prepared:
    thinking_open: bool
    prefix: str  # what the router appended to the prompt for the model to continue


class Generation:
    def __init__(self, core, api: ApiRequest, tenant: str, request_id: str) -> None:
        self.core = core
        self.api = api
        self.tenant = tenant
        self.request_id = request_id
        self.answer = Answer(request_id, core.model_name)
        self.finished = False

    def start(self, executor) -> ThreadStream:
        return ThreadStream(executor, self._produce)

    def _produce(self) -> Iterator:
        return self.core.generate(self.api.generate, self.tenant)

    async def first(self, stream: ThreadStream) -> public_pb2.GenerateResponse:
        return await stream.next()

    def _take(self, response: public_pb2.GenerateResponse) -> list[dict]:
        """Bookkeeping of one response; returns its logprobs entries."""
        if response.finish_reason:
            self.answer.finish_reason = response.finish_reason
            self.answer.usage = usage(response.usage)
            self.finished = True
        if not self.api.logprobs or not response.logprobs:
            return []
        entries = token_logprobs(response.logprobs, self.core.tokenizer)
        self.answer.logprobs.extend(entries)
        return entries

    async def _responses(self, stream: ThreadStream, first) -> AsyncIterator[public_pb2.GenerateResponse]:
        yield first
        async for response in stream:
            yield response


class ChatGeneration(Generation):
    parser: OutputParser

    def _produce(self) -> Iterator:
        tokenizer = self.core.tokenizer
        prompt = render_chat(  # in this thread: off the event loop
            tokenizer, self.api.generate.chat,
            allow_special_tokens_in_content=self.core.config.allow_special_tokens_in_content,
        )
        tail = tokenizer.decode(prompt[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        thinking_open = prompt_opens_thinking(tail)
        prefix = self._forced_prefix(thinking_open)
        yield Prepared(thinking_open, prefix)
        request = public_pb2.GenerateRequest()
        request.CopyFrom(self.api.generate)
        request.token_ids.ids.extend(prompt + (tokenizer.encode(prefix) if prefix else []))  # replaces the chat
        yield from self.core.generate(request, self.tenant)

    def _forced_prefix(self, thinking_open: bool) -> str:
        """tool_choice "required" / named: the call's opening, after closing an open thinking block."""
        if not self.api.forced_call:
            return ""
        family = family_for_template(self.core.tokenizer.chat_template)
        if family is None:
            raise BadRequest("this model's chat template has no tool-call format; use tool_choice 'auto' or 'none'", "tool_choice")  # noqa: E501
        name = "" if self.api.forced_call == REQUIRED else self.api.forced_call
        return (REASONING_CLOSE + "\n\n" if thinking_open else "") + call_opening(family, name)

    async def first(self, stream: ThreadStream) -> public_pb2.GenerateResponse:
        prepared = await stream.next()
        template = self.core.tokenizer.chat_template
        reasoning = ReasoningParser(prepared.thinking_open) if template and "<think>" in template else None
        family = family_for_template(template) if self.api.parse_tools else None
        tools = ToolCallParser(family, parameter_types(list(self.api.tools))) if family else None
        self.parser = OutputParser(reasoning, tools, prefix=prepared.prefix)
        return await stream.next()

    async def chunks(self, stream: ThreadStream, first) -> AsyncIterator[dict]:
        yield chat_chunk(self.answer, {"role": "assistant", "content": ""})
        async for response in self._responses(stream, first):
            logprobs = self._take(response)
            events = self.parser.feed(response.text)
            if response.finish_reason:
                events += self.parser.finish()
            for index, event in enumerate(events):
                self.answer.called_tools |= "tool_calls" in delta_for(event)
                yield chat_chunk(self.answer, delta_for(event), logprobs=logprobs if index == 0 else None)
            if logprobs and not events:
                yield chat_chunk(self.answer, {}, logprobs=logprobs)
        reason = finish_reason(self.answer.finish_reason, self.answer.called_tools)
        yield chat_chunk(self.answer, {}, finish=reason)
        if self.api.include_usage:
            yield usage_chunk(self.answer)

    async def whole(self, stream: ThreadStream, first) -> dict:
        text = []
        async for response in self._responses(stream, first):
            self._take(response)
            text.append(response.text)
        return chat_completion(self.answer, fold(self.parser.parse_all("".join(text))), self.api.logprobs)


class TextGeneration(Generation):
    async def chunks(self, stream: ThreadStream, first) -> AsyncIterator[dict]:
        async for response in self._responses(stream, first):
            self._take(response)
            if response.text or (self.api.logprobs and self.answer.logprobs):
                yield text_completion(self.answer, response.text, None, self.api.logprobs, None)
        yield text_completion(self.answer, "", finish_reason(self.answer.finish_reason, False), False, None)
        if self.api.include_usage:
            chunk = text_completion(self.answer, "", None, False, self.answer.usage)
            chunk["choices"] = []
            yield chunk

    async def whole(self, stream: ThreadStream, first) -> dict:
        text = []
        async for response in self._responses(stream, first):
            self._take(response)
            text.append(response.text)
        reason = finish_reason(self.answer.finish_reason, False)
        return text_completion(self.answer, "".join(text), reason, self.api.logprobs, self.answer.usage)
