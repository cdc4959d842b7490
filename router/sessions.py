"""The session table: which workers served an agent session last (routing affinity)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class SessionEntry:
    decode_worker: str
    prefill_worker: str
    last_seen: float
    turns: int = 1


ENTRY_OVERHEAD_BYTES = 256  # an entry's dataclass, dict slot and worker id strings, roughly


class SessionTable:
    """Bounded LRU of sessions, by count and by bytes (a client picks its session ids' length, so the
    count alone bounds nothing); entries older than `ttl_s` are forgotten."""

    def __init__(
        self, max_sessions: int = 100_000, ttl_s: float = 3600.0, clock=time.monotonic, max_bytes: int = 1 << 28
    ) -> None:
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes = 0
        self.ttl_s = ttl_s
        self._clock = clock

    def get(self, session_id: str) -> SessionEntry | None:
        if not session_id:
            return None
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return None
            if self._clock() - entry.last_seen > self.ttl_s:
                del self._entries[session_id]
                self.bytes -= _entry_bytes(session_id)
                return None
            return entry

    def record(self, session_id: str, decode_worker: str, prefill_worker: str) -> None:
        if not session_id:
            return
        with self._lock:
            entry = self._entries.pop(session_id, None)
            turns = entry.turns + 1 if entry else 1
            if entry is None:
                self.bytes += _entry_bytes(session_id)
            self._entries[session_id] = SessionEntry(decode_worker, prefill_worker, self._clock(), turns)
            while self._entries and (len(self._entries) > self.max_sessions or self.bytes > self.max_bytes):
                oldest, _ = self._entries.popitem(last=False)
                self.bytes -= _entry_bytes(oldest)

    def __len__(self) -> int:
        return len(self._entries)


def _entry_bytes(session_id: str) -> int:
    return len(session_id) + ENTRY_OVERHEAD_BYTES
