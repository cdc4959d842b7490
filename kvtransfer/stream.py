"""The transport-independent halves of a transfer: the sending handle and the receive loop.

On the wire a transfer is a sequence of control messages (JSON dicts) and raw payloads:
  {"kind": "open", "transfer_id", "secret"}             (or "read" for a pull, see backends)
  {"kind": "data", "region", "layer", "runs": [[position, count], ...]}  then one payload per run
  {"kind": "finish", "manifest": {...}}  |  {"kind": "abort", "reason"}
Positions index the descriptor's unit lists; the receiver maps them to its own units, so a sender
can only ever write into the units reserved for its transfer, and only with its secret.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from kvtransfer.base import SendHandle, TransferDescriptor, TransferError, UnknownTransfer
from kvtransfer.book import ReceiveBook
from kvtransfer.manifest import Manifest, build_entry
from kvtransfer.regions import RegionSet, runs


class Link(Protocol):
    """Sender-side transport of one transfer."""

    def send_control(self, msg: dict[str, Any]) -> None: ...
    def send_payloads(self, views: list[torch.Tensor]) -> None: ...
    def flush(self) -> None: ...  # returns once everything sent so far has left
    def close(self) -> None: ...


class Source(Protocol):
    """Receiver-side transport of one transfer; both calls raise on a dead peer or past the deadline."""

    def recv_control(self, deadline_mono: float) -> dict[str, Any]: ...
    def recv_payloads(self, views: list[torch.Tensor], deadline_mono: float) -> None: ...
    def drain(self) -> None: ...  # returns once every payload received is in its destination


class StreamSendHandle(SendHandle):
    """Posts are validated here and sent by one background thread, so compute overlaps transfer."""

    def __init__(
        self,
        link: Link,
        regions: RegionSet,
        descriptor: TransferDescriptor,
        *,
        corrupt: tuple[str, int] | None = None,
        send_open: bool = True,
    ) -> None:
        self._link, self._regions, self._desc = link, regions, descriptor
        self._corrupt = corrupt
        _check_layouts(regions, descriptor)
        self._lock = threading.Lock()
        self._placed: dict[tuple[str, int], dict[int, int]] = {}
        self._cursor: dict[tuple[str, int], int] = {}
        self._ops: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._error = ""
        self._closed = False
        self._done = threading.Event()
        if send_open:
            open_msg = {"kind": "open", "transfer_id": descriptor.transfer_id, "secret": descriptor.secret}
            self._ops.put(("control", open_msg))
        self._thread = threading.Thread(target=self._run, name=f"send-{descriptor.transfer_id}", daemon=True)
        self._thread.start()

    def post(self, region: str, layer: int, src_units: list[int] | tuple[int, ...]) -> None:
        dst = self._desc.dst_units.get(region)
        if dst is None:
            raise TransferError(f"descriptor has no region {region!r}; it has {sorted(self._desc.dst_units)}")
        src = [int(u) for u in src_units]
        self._regions.check_units({region: src})
        if not 0 <= layer < self._regions.layouts[region].num_layers:
            raise TransferError(f"region {region!r}: layer {layer} out of range")
        with self._lock:
            if self._closed:
                raise TransferError("post() after finish() or abort()")
            start = self._cursor.get((region, layer), 0)
            if start + len(src) > len(dst):
                raise TransferError(
                    f"region {region!r} layer {layer}: {start + len(src)} units posted, "
                    f"descriptor has {len(dst)}"
                )
            self._cursor[(region, layer)] = start + len(src)
            skip = max(0, self._desc.skipped(region) - start)  # the receiver already has these
            first = start + skip
            placed = self._placed.setdefault((region, layer), {})
            placed.update(zip(range(first, start + len(src)), src[skip:], strict=True))
            unit_runs = runs(first, src[skip:], list(dst[first : start + len(src)]))
        if unit_runs:
            self._ops.put(("data", (region, layer, unit_runs)))

    def finish(self, first_token: int | None, extras: dict[str, int | str] | None = None) -> None:
        with self._lock:
            if self._closed:
                raise TransferError("finish() called twice or after abort()")
            self._closed = True
        self._ops.put(("finish", (first_token, dict(extras or {}))))
        left = self._desc.deadline_unix_s - time.time()
        if not self._done.wait(timeout=max(0.0, left) + 1.0):
            self._error = self._error or "deadline expired before the transfer was flushed"
            self._link.close()
        if self._error:
            raise TransferError(f"transfer {self._desc.transfer_id!r} failed: {self._error}")

    def abort(self, reason: str) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            self._error = self._error or f"aborted: {reason}"
            self._ops.put(("abort", reason))

    def _run(self) -> None:
        try:
            while True:
                kind, arg = self._ops.get()
                if time.time() > self._desc.deadline_unix_s:
                    raise TransferError("deadline expired")
                if kind == "control":
                    self._link.send_control(arg)
                elif kind == "data" and not self._error:
                    self._send_data(*arg)
                elif kind == "finish":
                    self._link.send_control({"kind": "finish", "manifest": self._manifest(*arg).to_dict()})
                    self._link.flush()
                    return
                elif kind == "abort":
                    self._link.send_control({"kind": "abort", "reason": arg})
                    self._link.flush()
                    return
        except Exception as exc:  # the transport failed: report it from finish()
            self._error = self._error or f"{type(exc).__name__}: {exc}"
        finally:
            self._link.close()
            self._done.set()

    def _send_data(self, region: str, layer: int, unit_runs: list) -> None:
        views = [self._regions.run_view(region, layer, r.src, r.count) for r in unit_runs]
        if self._corrupt == (region, layer):  # test hook: flip one byte on the way, not at the source
            self._corrupt = None
            views[0] = views[0].clone()
            views[0][0] ^= 0xFF
        self._link.send_control(
            {
                "kind": "data",
                "region": region,
                "layer": layer,
                "runs": [[r.index, r.count] for r in unit_runs],
            }
        )
        self._link.send_payloads(views)

    def _manifest(self, first_token: int | None, extras: dict[str, int | str]) -> Manifest:
        with self._lock:
            placed = {key: dict(v) for key, v in self._placed.items()}
        entries = tuple(  # a (region, layer) whose posts were all skipped sends nothing to check
            build_entry(self._regions, region, layer, units)
            for (region, layer), units in sorted(placed.items())
            if units
        )
        layouts = {r: self._regions.layouts[r] for r in self._desc.dst_units}
        return Manifest(layouts, entries, first_token, extras)


def _check_layouts(regions: RegionSet, descriptor: TransferDescriptor) -> None:
    for region, theirs in descriptor.layouts.items():
        mine = regions.layouts.get(region)
        if mine is None or (mine.dtype, mine.unit_shape, mine.num_layers) != (
            theirs.dtype,
            theirs.unit_shape,
            theirs.num_layers,
        ):
            raise TransferError(f"layout mismatch region={region}: local {mine}, peer {theirs}")


def receive_into(book: ReceiveBook, transfer_id: str, source: Source) -> None:
    """Drain one transfer's messages into the book; every failure ends as FAILED(reason)."""
    try:
        deadline = book.deadline(transfer_id)
        while True:
            msg = source.recv_control(deadline)
            kind = msg.get("kind")
            if kind == "data":
                region, layer = msg["region"], int(msg["layer"])
                views = book.dst_views(transfer_id, region, layer, msg["runs"])
                source.recv_payloads(views, deadline)
            elif kind == "finish":
                source.drain()  # staged copies to the device done before the check
                book.complete(transfer_id, Manifest.from_dict(msg["manifest"]))
                return
            elif kind == "abort":
                book.fail(transfer_id, f"sender aborted: {msg.get('reason', '')}")
                return
            else:
                raise TransferError(f"unexpected message kind {kind!r}")
    except UnknownTransfer:
        return  # forgotten meanwhile: nobody is waiting for it
    except Exception as exc:
        book.fail(transfer_id, f"{type(exc).__name__}: {exc}")


def serve_read(
    make_handle: Callable[[TransferDescriptor], StreamSendHandle],
    regions: RegionSet,
    exposed: dict[str, tuple[int, ...]],
    request: dict[str, Any],
    backend: str,
    deadline_unix_s: float,
) -> None:
    """Holder side of a read: send every layer of the exposed units to the reader's units."""
    dst = {r: tuple(int(u) for u in units) for r, units in request["dst_units"].items()}
    if sorted(dst) != sorted(exposed) or any(len(dst[r]) != len(exposed[r]) for r in dst):
        raise TransferError("read request units do not match the exposed units")
    layouts = {r: regions.layouts[r] for r in dst}
    desc = TransferDescriptor(request["transfer_id"], backend, b"", dst, layouts, deadline_unix_s)
    handle = make_handle(desc)
    for region, units in exposed.items():
        for layer in range(regions.layouts[region].num_layers):
            handle.post(region, layer, units)
    handle.finish(None)
