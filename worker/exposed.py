"""The prefixes this worker exposes to peers (`ExposePrefix`), until `ReleaseExposed` or their
deadline's reaper timer pops them. Handler threads and timers share the set; it has its own lock."""

from __future__ import annotations

import threading

from engine.cache.prefix_cache import ExportedPrefix


class ExposedPrefixes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, ExportedPrefix] = {}

    def add(self, transfer_id: str, exported: ExportedPrefix) -> None:
        with self._lock:
            self._entries[transfer_id] = exported

    def pop(self, transfer_id: str) -> ExportedPrefix | None:
        """The exposed prefix, removed from the set; None if it was released already."""
        with self._lock:
            return self._entries.pop(transfer_id, None)
