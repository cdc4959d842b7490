"""One thread owns the engine: it runs `step()` while there is work and executes every other
engine call (add, abort, reserve, release, metrics) between steps. The engine takes no locks
(`engine/llm_engine.py`): this thread is the only one that touches it. gRPC handler threads talk
to it through `call()` and per-request output queues."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05


class EngineStopped(RuntimeError):
    pass


class EngineLoop:
    def __init__(self, engine: Any, name: str = "engine") -> None:
        self.engine = engine
        self._inbox: queue.Queue[tuple[Callable[[Any], Any], Future]] = queue.Queue()
        self._streams: dict[str, queue.Queue] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.step_count = 0
        self.last_error: BaseException | None = None

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self._thread.join(timeout_s)
        for stream in list(self._streams.values()):
            stream.put(EngineStopped("engine stopped"))

    # ---- called from other threads -------------------------------------------------------------
    def call(self, fn: Callable[[Any], Any], timeout_s: float = 30.0) -> Any:
        """Runs fn(engine) on the engine thread between steps; returns its result or raises."""
        if self._stopped.is_set():
            raise EngineStopped("engine stopped")
        future: Future = Future()
        self._inbox.put((fn, future))
        return future.result(timeout=timeout_s)

    def open_stream(self, request_id: str) -> queue.Queue:
        """Outputs of `request_id` arrive on the returned queue (RequestOutput, or an exception)."""
        stream: queue.Queue = queue.Queue()
        self._streams[request_id] = stream
        return stream

    def close_stream(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    def add_request(self, request_id: str, prompt: list[int], params: Any, **options: Any) -> queue.Queue:
        stream = self.open_stream(request_id)
        try:
            self.call(lambda engine: engine.add_request(request_id, prompt, params, **options))
        except BaseException:
            self.close_stream(request_id)
            raise
        return stream

    # ---- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            self._drain_inbox(block=not self._has_work())
            if self._has_work():
                self._step()

    def _has_work(self) -> bool:
        try:
            return bool(self.engine.has_unfinished_requests())
        except Exception:  # noqa: BLE001 - a broken engine must not kill the loop silently
            log.exception("has_unfinished_requests failed")
            return False

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.engine))
                except BaseException as error:  # noqa: BLE001 - handed to the caller
                    future.set_exception(error)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _step(self) -> None:
        started = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as error:  # noqa: BLE001 - fail the streams, keep serving
            log.exception("engine step failed")
            self.last_error = error
            for request_id, stream in list(self._streams.items()):
                stream.put(error)
                self.engine.abort(request_id)
            return
        self.step_count += 1
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
        log.debug("step %d: %d outputs in %.1f ms", self.step_count, len(outputs), 1e3 * (time.perf_counter() - started))
