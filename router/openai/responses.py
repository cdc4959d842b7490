"""OpenAI response objects: chat completion (whole and chunks), text completion, usage, logprobs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from router.openai.events import Content, Event, Folded, Reasoning, ToolCallArguments, ToolCallStart


@dataclass(slots=True)
class Answer:
    """What one request has produced so far."""

    request_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    finish_reason: str = ""
    usage: dict | None = None
    logprobs: list[dict] = field(default_factory=list)
    called_tools: bool = False


def usage(message) -> dict:
    """The router's Usage → OpenAI's, `cached_tokens` included."""
    return {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "total_tokens": message.prompt_tokens + message.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": message.cached_tokens},
    }


def finish_reason(reason: str, called_tools: bool) -> str:
    if reason == "stop" and called_tools:
        return "tool_calls"
    return reason if reason in ("stop", "length") else "stop"


def token_logprobs(entries, tokenizer) -> list[dict]:
    """Worker TokenLogprobs → OpenAI's `logprobs.content` entries (with their `top_logprobs`)."""
    result = []
    for entry in entries:
        item = _token_entry(entry.token_id, entry.logprob, tokenizer)
        item["top_logprobs"] = [
            _token_entry(token_id, logprob, tokenizer)
            for token_id, logprob in zip(entry.top_token_ids, entry.top_logprobs, strict=True)
        ]
        result.append(item)
    return result


def _token_entry(token_id: int, logprob: float, tokenizer) -> dict:
    token = tokenizer.decode([token_id], skip_special_tokens=False)
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_chunk(answer: Answer, delta: dict, finish: str | None = None, logprobs: list[dict] | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None, "finish_reason": finish}
    return {"id": f"chatcmpl-{answer.request_id}", "object": "chat.completion.chunk", "created": answer.created,
            "model": answer.model, "choices": [choice]}  # fmt: skip


def usage_chunk(answer: Answer) -> dict:
    return {"id": f"chatcmpl-{answer.request_id}", "object": "chat.completion.chunk", "created": answer.created,
            "model": answer.model, "choices": [], "usage": answer.usage}  # fmt: skip


def delta_for(event: Event) -> dict:
    if isinstance(event, Content):
        return {"content": event.text}
    if isinstance(event, Reasoning):
        return {"reasoning_content": event.text}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{"index": event.index, "id": event.call_id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}  # fmt: skip
    assert isinstance(event, ToolCallArguments)
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


def chat_completion(answer: Answer, folded: Folded, with_logprobs: bool) -> dict:
    calls = [{"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
             for c in folded.tool_calls]  # fmt: skip
    content = folded.content
    if calls and not content.strip():
        content = None
    message = {"role": "assistant", "content": content}
    if folded.reasoning:
        message["reasoning_content"] = folded.reasoning
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": {"content": answer.logprobs} if with_logprobs else None,
        "finish_reason": finish_reason(answer.finish_reason, bool(calls)),
    }
    return {"id": f"chatcmpl-{answer.request_id}", "object": "chat.completion", "created": answer.created,
            "model": answer.model, "choices": [choice], "usage": answer.usage}  # fmt: skip


def text_completion(answer: Answer, text: str, finish: str | None, with_logprobs: bool, usage_: dict | None) -> dict:
    logprobs = None
    if with_logprobs:
        logprobs = {"tokens": [e["token"] for e in answer.logprobs],
                    "token_logprobs": [e["logprob"] for e in answer.logprobs],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in answer.logprobs],
                    "text_offset": []}  # fmt: skip
        answer.logprobs = []
    result = {"id": f"cmpl-{answer.request_id}", "object": "text_completion", "created": answer.created,
              "model": answer.model, "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}  # fmt: skip
    if usage_ is not None:
        result["usage"] = usage_
    return result
