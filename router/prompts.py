"""Turning a public GenerateRequest into validated prompt token ids and sampling params."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baton_pb.v1 import public_pb2
from engine.tokenizer import Tokenizer
from rpc.convert import sampling_from_proto


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    request_id: str
    session_id: str
    tenant: str
    prompt: list[int]
    params: object  # engine SamplingParams


def prompt_token_ids(request: public_pb2.GenerateRequest, tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise ValueError("prompt is empty: set one of text, chat or token_ids")
    if kind == "text":
        if not request.text:
            raise ValueError("prompt is empty")
        ids = tokenizer.encode(request.text)
    elif kind == "chat":
        messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
        if not messages:
            raise ValueError("chat has no messages")
        for m in messages:
            if m["role"] not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"unknown chat role {m['role']!r}")
        ids = tokenizer.encode_chat(messages)
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
) -> PreparedRequest:
    prompt = prompt_token_ids(request, tokenizer, vocab_size)
    if len(prompt) >= max_context:
        raise ValueError(f"prompt has {len(prompt)} tokens; the context window is {max_context}")
    params = sampling_from_proto(request.sampling, default_max_tokens=default_max_tokens)
    if params.max_tokens > max_tokens_limit:
        raise ValueError(f"max_tokens {params.max_tokens} exceeds the limit {max_tokens_limit}")
    params.validate(vocab_size)
    return PreparedRequest(request_id, request.session_id, tenant, prompt, params)
