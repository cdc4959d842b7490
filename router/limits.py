"""Bounds on the work one request may ask for, checked before the router spends anything on it.

A request within the gRPC message limit can still ask for a lot: a megabyte of request id echoed
into every streamed message, a 4 MB session id kept for an hour, 100k stop strings scanned on every
token of everyone in the batch. Each bound has a router flag; breaking one is INVALID_ARGUMENT (a
ValueError) with a message naming the bound and the flag. The prompt's token count is checked after
tokenization (`check_prompt_tokens`); everything else before it (`check_request`).
"""

from __future__ import annotations

from dataclasses import dataclass

from baton_pb.v1 import public_pb2


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_prompt_bytes: int = 8 * 1024 * 1024  # text / chat content; also the gRPC receive limit
    max_prompt_tokens: int = 0  # 0: the model's context window is the only bound
    max_request_id_bytes: int = 128
    max_session_id_bytes: int = 256
    max_stop_strings: int = 16
    max_stop_bytes: int = 4096  # all stop strings together
    max_stop_token_ids: int = 64

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def check_request(request: public_pb2.GenerateRequest, limits: RequestLimits) -> None:
    """Raises ValueError for a request over any bound that can be checked without tokenizing."""
    _bounded("request_id", _utf8_len(request.request_id), limits.max_request_id_bytes, "--max-request-id-bytes")
    _bounded("session_id", _utf8_len(request.session_id), limits.max_session_id_bytes, "--max-session-id-bytes")
    _bounded("prompt", prompt_bytes(request), limits.max_prompt_bytes, "--max-prompt-bytes", unit="bytes")
    sampling = request.sampling
    _bounded("stop", len(sampling.stop), limits.max_stop_strings, "--max-stop-strings", unit="strings")
    stop_bytes = sum(_utf8_len(s) for s in sampling.stop)
    _bounded("stop strings", stop_bytes, limits.max_stop_bytes, "--max-stop-bytes", unit="bytes in all")
    _bounded("stop_token_ids", len(sampling.stop_token_ids), limits.max_stop_token_ids, "--max-stop-token-ids", unit="ids")


def check_prompt_tokens(tokens: int, limits: RequestLimits) -> None:
    if limits.max_prompt_tokens:
        _bounded("prompt", tokens, limits.max_prompt_tokens, "--max-prompt-tokens", unit="tokens")


def prompt_bytes(request: public_pb2.GenerateRequest) -> int:
    """Bytes of text the router would tokenize or render (0 for token ids)."""
    kind = request.WhichOneof("prompt")
    if kind == "text":
        return _utf8_len(request.text)
    if kind == "chat":
        return request.chat.ByteSize()
    return 0


def _utf8_len(text: str) -> int:
    # len(text) bounds the UTF-8 size from below and 4 * len(text) from above: encode only when needed
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _bounded(what: str, size: int, limit: int, flag: str, unit: str = "bytes") -> None:
    if size > limit:
        raise ValueError(f"{what} has {size} {unit}; the limit is {limit} (router flag {flag})")
