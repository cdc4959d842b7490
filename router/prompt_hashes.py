"""Block hashes of prompts, incrementally per session.

An agentic session resends its whole growing context every turn; rehashing 32K tokens costs a few
milliseconds of Python per request. The router remembers each session's last prompt and its
hashes, and when the new prompt extends it (checked with one vectorized comparison) hashes only
the new blocks, chained from the last known one. What it remembers is bounded by count and by bytes
(prompt tokens + hashes + the key): a few huge sessions cannot hold the router's memory."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from engine.cache.hashing import block_hashes


class PromptHasher:
    def __init__(self, block_size: int, max_sessions: int = 10_000, max_bytes: int = 1 << 28) -> None:
        self.block_size = block_size
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes = 0
        self._sessions: OrderedDict[tuple[str, bytes], tuple[np.ndarray, list[int]]] = OrderedDict()
        self._lock = threading.Lock()
        self.reused_blocks = 0

    def hashes(self, prompt: list[int] | np.ndarray, extra: bytes, session_id: str = "") -> list[int]:
        tokens = np.asarray(prompt, dtype=np.int64)
        if not session_id:
            return block_hashes(tokens, self.block_size, extra=extra)
        key = (session_id, extra)
        with self._lock:
            previous = self._sessions.get(key)
        known = self._reusable_blocks(tokens, previous)
        if known:
            start = known * self.block_size
            prior = previous[1][:known]
            result = prior + block_hashes(tokens[start:], self.block_size, extra=extra, parent=prior[-1])
            self.reused_blocks += known
        else:
            result = block_hashes(tokens, self.block_size, extra=extra)
        with self._lock:
            old = self._sessions.pop(key, None)
            if old is not None:
                self.bytes -= _remembered_bytes(key, old)
            self._sessions[key] = (tokens, result)
            self.bytes += _remembered_bytes(key, (tokens, result))
            while self._sessions and (len(self._sessions) > self.max_sessions or self.bytes > self.max_bytes):
                evicted = self._sessions.popitem(last=False)
                self.bytes -= _remembered_bytes(*evicted)
        return result

    def _reusable_blocks(self, tokens: np.ndarray, previous) -> int:
        """Leading blocks of `tokens` equal to the session's previous prompt (0 if it diverged)."""
        if previous is None:
            return 0
        old_tokens, old_hashes = previous
        blocks = min(len(old_hashes), len(tokens) // self.block_size)
        span = blocks * self.block_size
        if blocks == 0 or not np.array_equal(tokens[:span], old_tokens[:span]):
            return 0
        return blocks


def _remembered_bytes(key: tuple[str, bytes], value: tuple[np.ndarray, list[int]]) -> int:
    tokens, hashes = value
    # a hash is a Python int (32 bytes) plus its list slot (8)
    return len(key[0]) + len(key[1]) + tokens.nbytes + 40 * len(hashes) + 256
