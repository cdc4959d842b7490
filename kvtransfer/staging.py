"""Staging device memory through a ring of pinned host buffers, for transports that only move host
bytes (tcp; ucx without CUDA transports).

Sender (`StagedWriter`): the caller copies chunk k+1 (device -> host, on a side stream) into a free
slot while a sender thread puts chunk k on the wire, so the copy of layer L+1 overlaps the send of
layer L. Control frames travel through the same queue, so the wire order is the call order.
Receiver (`StagedReader`): chunk k+1 is received into the next slot while chunk k is copied to the
device; a slot is reused only after its copy finished, and `drain()` waits for the last ones.

The copy function is injectable (`Copy`): `device_copy` for cuda, `host_copy` for host tensors
standing in for device memory in tests.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

Wait = Callable[[], None]
Copy = Callable[[torch.Tensor, torch.Tensor], Wait]  # copy(dst, src) starts a copy; wait() ends it


@dataclass(frozen=True, slots=True)
class StagingOptions:
    slots: int = 4
    slot_bytes: int = 4 << 20
    pin: bool = True  # pinned host memory (needs a cuda build; off for host stand-ins)


def host_copy(dst: torch.Tensor, src: torch.Tensor) -> Wait:
    dst.copy_(src)
    return lambda: None


def device_copy(device: torch.device) -> Copy:
    """Copies on a side stream that first waits for the work already queued on the default
    stream (the layer that was just computed); wait() blocks until this copy is done."""
    stream = torch.cuda.Stream(device)

    def copy(dst: torch.Tensor, src: torch.Tensor) -> Wait:
        stream.wait_stream(torch.cuda.default_stream(device))
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return event.synchronize

    return copy


def _ring(options: StagingOptions) -> list[torch.Tensor]:
    if options.slots < 2 or options.slot_bytes < 1:
        raise ValueError("a staging ring needs >= 2 slots of >= 1 byte")
    pin = options.pin and torch.cuda.is_available()
    return [torch.empty(options.slot_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(options.slots)]


class RingPool:
    """Rings reused across transfers: pinning host memory costs milliseconds, a transfer should not."""

    def __init__(self, options: StagingOptions, keep: int = 8) -> None:
        self.options, self._keep = options, keep
        self._free: list[list[torch.Tensor]] = []
        self._lock = threading.Lock()

    def take(self) -> list[torch.Tensor]:
        with self._lock:
            if self._free:
                return self._free.pop()
        return _ring(self.options)

    def give(self, ring: list[torch.Tensor]) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(ring)


def _chunks(view: torch.Tensor, size: int):
    flat = view.reshape(-1)
    for start in range(0, flat.numel(), size):
        yield flat[start : start + size]


def _bytes(buffer: torch.Tensor) -> memoryview:
    return memoryview(buffer.numpy()).cast("B")


class StagedWriter:
    """Ordered frames and staged payloads to `send` (a blocking write of host bytes)."""

    def __init__(
        self,
        send: Callable[[memoryview], None],
        copy: Copy,
        ring: list[torch.Tensor],
        release: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> None:
        """`release(ring)` runs once the sender thread is done with the ring (after close())."""
        self._send, self._copy, self._release = send, copy, release
        self._slots = ring
        self._free: queue.Queue[int] = queue.Queue()
        for index in range(len(self._slots)):
            self._free.put(index)
        self._work: queue.Queue[tuple | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="staged-send", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        self._raise_if_failed()
        self._work.put(("bytes", data))

    def write_views(self, views: list[torch.Tensor]) -> None:
        size = self._slots[0].numel()
        for view in views:
            for chunk in _chunks(view, size):
                index = self._take_slot()
                staged = self._slots[index][: chunk.numel()]
                self._work.put(("slot", index, staged, self._copy(staged, chunk)))

    def flush(self) -> None:
        """Returns once everything written so far is on the wire; raises the sender's error."""
        self._work.join()
        self._raise_if_failed()

    def close(self) -> None:
        self._work.put(None)

    def _take_slot(self) -> int:
        while True:
            self._raise_if_failed()
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ConnectionError(f"staged send failed: {self._error}") from self._error

    def _run(self) -> None:
        try:
            while True:
                item = self._work.get()
                try:
                    if item is None:
                        return
                    if item[0] == "slot":
                        item[3]()  # the device -> host copy of this chunk (even after an error)
                    if self._error is None:
                        self._send_item(item)
                except BaseException as exc:  # reported to the caller by the next call
                    self._error = exc
                finally:
                    if item is not None and item[0] == "slot":
                        self._free.put(item[1])
                    self._work.task_done()
        finally:
            if self._release is not None:
                self._release(self._slots)

    def _send_item(self, item: tuple) -> None:
        if item[0] == "bytes":
            self._send(memoryview(item[1]))
            return
        self._send(_bytes(item[2]))


class StagedReader:
    """Payloads from `recv_exact` (fills a host buffer) into device views through the ring."""

    def __init__(self, copy: Copy, ring: list[torch.Tensor]) -> None:
        self._copy = copy
        self._slots = ring
        self._pending: list[Wait | None] = [None] * len(self._slots)
        self._next = 0

    def read_views(self, views: list[torch.Tensor], recv_exact: Callable[[memoryview], None]) -> None:
        size = self._slots[0].numel()
        for view in views:
            for chunk in _chunks(view, size):
                index = self._next
                self._next = (index + 1) % len(self._slots)
                self._settle(index)  # this slot's previous host -> device copy
                staged = self._slots[index][: chunk.numel()]
                recv_exact(_bytes(staged))
                self._pending[index] = self._copy(chunk, staged)

    def drain(self) -> None:
        """Wait for every copy still running (before the transfer is declared DONE)."""
        for index in range(len(self._slots)):
            self._settle(index)

    def _settle(self, index: int) -> None:
        wait, self._pending[index] = self._pending[index], None
        if wait is not None:
            wait()
