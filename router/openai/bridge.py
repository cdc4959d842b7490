"""Runs a blocking iterator (RouterCore.generate) in a thread; its items arrive on the event loop.

The router's core is synchronous (gRPC thread pool, a sync generator per request); the HTTP face
bridges to it instead of moving the router to asyncio, so both faces share one code path and the
gRPC side is untouched. One thread hop per item costs microseconds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor

_END = object()


class ThreadStream:
    def __init__(self, executor: Executor, produce: Callable[[], Iterator]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        self.done = self._loop.run_in_executor(executor, self._pump, produce)

    def _pump(self, produce: Callable[[], Iterator]) -> None:
        items = None
        try:
            items = produce()
            for item in items:
                if self._stop.is_set():
                    return
                self._put(item)
            self._put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the event loop, raised there
            self._put(error)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator left early cancels its worker calls (RouterCore's cleanup)

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown): nobody is waiting
            self._stop.set()

    async def next(self):
        """The next item; raises StopAsyncIteration at the end, or the producer's exception."""
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.next()

    def stop(self) -> None:
        """The consumer left: the producer stops at its next item."""
        self._stop.set()
