"""Block hashes of prompts, incrementally per session.

An agentic session resends its whole growing context every turn; rehashing 32K tokens costs a few
milliseconds of Python per request. The router remembers each session's last prompt and its
hashes, and when the new prompt extends it (checked with one vectorized comparison) hashes only
the new blocks, chained from the last known one."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from engine.cache.hashing import block_hashes


class PromptHasher:
    def __init__(self, block_size: int, max_sessions: int = 10_000) -> None:
        self.block_size = block_size
        self.max_sessions = max_sessions
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
            self._sessions[key] = (tokens, result)
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
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
