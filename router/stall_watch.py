"""Telling a stalled worker from a slow one, on a server stream.

Workers send a heartbeat on every stream while they have nothing else to send (see
`worker/token_stream.py`), from a thread other than the engine's, so long prefills and JIT are
not silence. Silence — no message at all for `stall_timeout_s` — means the worker process is
stopped or its host is gone: the watch cancels the call and the iteration raises `WorkerStalled`
(UNAVAILABLE), which the flow treats as a dead worker (failover with the usual resume). A prefill
stream also has a progress deadline: heartbeats alone for `progress_deadline_s` count as a stall.
One watchdog thread serves every watched stream of the router.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

TICK_S = 0.05


class WorkerStalled(grpc.RpcError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._message


class StallWatch:
    """Iterates a server-streaming call; cancels it when the worker goes silent."""

    def __init__(
        self,
        call: Any,
        stall_timeout_s: float,
        *,
        progress_deadline_s: float | None = None,
        is_progress: Callable[[Any], bool] = lambda message: True,
    ) -> None:
        self.call = call
        self.stall_timeout_s = stall_timeout_s
        self.progress_deadline_s = progress_deadline_s
        self.is_progress = is_progress
        now = time.monotonic()
        self.last_message = self.last_progress = now
        self.stalled = ""

    def __iter__(self) -> Iterator[Any]:
        _WATCHDOG.add(self)
        try:
            for message in self.call:
                now = time.monotonic()
                self.last_message = now
                if self.is_progress(message):
                    self.last_progress = now
                yield message
        except grpc.RpcError as error:
            if self.stalled:
                raise WorkerStalled(self.stalled) from error
            raise
        finally:
            _WATCHDOG.remove(self)
        if self.stalled:
            raise WorkerStalled(self.stalled)

    def cancel(self) -> None:
        self.call.cancel()

    def check(self, now: float) -> None:
        """Watchdog thread: cancel the call once the worker has been silent too long."""
        if self.stalled:
            return
        if now - self.last_message > self.stall_timeout_s:
            self.stalled = f"worker sent nothing (no token, no heartbeat) for {self.stall_timeout_s:g} s"
        elif self.progress_deadline_s is not None and now - self.last_progress > self.progress_deadline_s:
            self.stalled = f"worker made no progress for {self.progress_deadline_s:g} s"
        if self.stalled:
            self.call.cancel()


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[StallWatch] = set()
        self._thread: threading.Thread | None = None

    def add(self, watch: StallWatch) -> None:
        with self._lock:
            self._watched.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="stall-watchdog", daemon=True)
                self._thread.start()

    def remove(self, watch: StallWatch) -> None:
        with self._lock:
            self._watched.discard(watch)

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            with self._lock:
                watched = list(self._watched)
            now = time.monotonic()
            for watch in watched:
                watch.check(now)


_WATCHDOG = _Watchdog()
