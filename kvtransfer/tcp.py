"""`tcp`: one TCP connection per transfer. Frames: b"BKV1" + u32 length + JSON control message;
a data message is followed by its raw payloads. Host units are received straight into the
destination (`recv_into` a memoryview of the tensor) and sent straight from the source
(`sendall`). Device units go through a staging ring of pinned host buffers
(`kvtransfer/staging.py`): the device-to-host copy of the next layer overlaps the send of this
one, and the receiver's host-to-device copy overlaps the next receive.
Connections pass `tcp_gate.ConnectionGate` first: no thread and no buffer beyond the bytes that
arrived until the first frame names a transfer this backend expects, with its secret. Payload
sizes come from the reservation (the book's views), never from the peer."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import torch

from kvtransfer.base import SendHandle, TransferDescriptor, TransferError, TransferResult
from kvtransfer.shared_backend import SharedBackend
from kvtransfer.staging import Copy, RingPool, StagedReader, StagedWriter, StagingOptions, device_copy
from kvtransfer.stream import StreamSendHandle, receive_into, serve_read
from kvtransfer.tcp_gate import HEADER as _HEADER
from kvtransfer.tcp_gate import MAGIC as _MAGIC
from kvtransfer.tcp_gate import ConnectionGate, GateLimits

MAX_CONTROL_BYTES = 4 << 20  # control frames after the first (a manifest) of an authorized transfer


def _bytes_of(view: torch.Tensor) -> memoryview:
    return memoryview(view.numpy()).cast("B")


class TcpLink:
    def __init__(self, sock: socket.socket, deadline_unix_s: float, stage_copy: Copy | None = None,
                 rings: RingPool | None = None) -> None:  # fmt: skip
        self._sock, self._deadline = sock, deadline_unix_s
        self._writer = None
        if stage_copy is not None:
            rings = rings or RingPool(StagingOptions())
            self._writer = StagedWriter(self._send_armed, stage_copy, rings.take(), rings.give)

    def _send_armed(self, data: memoryview) -> None:
        self._arm()
        self._sock.sendall(data)

    def _arm(self) -> None:
        left = self._deadline - time.time()
        if left <= 0:
            raise TimeoutError("deadline expired")
        self._sock.settimeout(left)

    def send_control(self, msg: dict[str, Any]) -> None:
        body = json.dumps(msg, separators=(",", ":")).encode()
        frame = _HEADER.pack(_MAGIC, len(body)) + body
        if self._writer is not None:
            self._writer.write(frame)
        else:
            self._send_armed(memoryview(frame))

    def send_payloads(self, views: list[torch.Tensor]) -> None:
        if self._writer is not None:
            self._writer.write_views(views)
            return
        self._arm()
        for view in views:
            self._sock.sendall(_bytes_of(view))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class TcpSource:
    def __init__(self, sock: socket.socket, reader: StagedReader | None = None, release=None) -> None:
        self._sock, self._reader, self._release = sock, reader, release

    def _recv_exact(self, buf: memoryview, deadline_mono: float) -> None:
        got = 0
        while got < len(buf):
            left = deadline_mono - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline expired while receiving")
            self._sock.settimeout(min(left, 1.0))
            try:
                n = self._sock.recv_into(buf[got:])
            except TimeoutError:
                continue
            if n == 0:
                raise ConnectionError("peer disconnected mid-transfer")
            got += n

    def recv_control(self, deadline_mono: float) -> dict[str, Any]:
        head = bytearray(_HEADER.size)
        self._recv_exact(memoryview(head), deadline_mono)
        magic, length = _HEADER.unpack(head)
        if magic != _MAGIC or length > MAX_CONTROL_BYTES:
            raise TransferError(f"bad frame header {bytes(head)!r}")
        body = bytearray(length)
        self._recv_exact(memoryview(body), deadline_mono)
        return json.loads(body)

    def recv_payloads(self, views: list[torch.Tensor], deadline_mono: float) -> None:
        if self._reader is not None:
            self._reader.read_views(views, lambda buf: self._recv_exact(buf, deadline_mono))
            return
        for view in views:
            self._recv_exact(_bytes_of(view), deadline_mono)

    def drain(self) -> None:
        if self._reader is not None:
            self._reader.drain()

    def close(self) -> None:
        """Wait for the last copies and hand the ring back (the socket is the caller's)."""
        if self._reader is not None:
            self._reader.drain()
            if self._release is not None:
                self._release()
            self._reader = None


class TcpBackend(SharedBackend):
    """`staging`: the ring's shape. `stage_copy` (tests): stage every region with this copy
    function, so host tensors can stand in for device memory."""

    name = "tcp"

    def __init__(
        self,
        host: str = "127.0.0.1",
        gate: GateLimits | None = None,
        staging: StagingOptions | None = None,
        stage_copy: Copy | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._rings, self._forced_copy = RingPool(staging or StagingOptions()), stage_copy
        self._listener = socket.create_server((host, 0), backlog=128)
        self._address = f"{host}:{self._listener.getsockname()[1]}".encode()
        self.gate = ConnectionGate(self._listener, self._authorize, self._serve, gate or GateLimits())

    @property
    def address(self) -> bytes:
        return self._address

    def _stage_copy(self) -> Copy | None:
        """The copy function when our regions need staging (device memory), else None."""
        if self._forced_copy is not None:
            return self._forced_copy
        device = self._require_regions().device
        return None if device is None else device_copy(device)

    def _link(self, sock: socket.socket, deadline_unix_s: float) -> TcpLink:
        return TcpLink(sock, deadline_unix_s, self._stage_copy(), self._rings)

    def _source(self, sock: socket.socket) -> TcpSource:
        copy = self._stage_copy()
        if copy is None:
            return TcpSource(sock)
        ring = self._rings.take()
        return TcpSource(sock, StagedReader(copy, ring), lambda: self._rings.give(ring))

    def _connect(self, descriptor: TransferDescriptor) -> socket.socket:
        host, _, port = descriptor.address.decode().rpartition(":")
        left = descriptor.deadline_unix_s - time.time()
        if left <= 0:
            raise TransferError(f"transfer {descriptor.transfer_id!r}: deadline already expired")
        try:
            sock = socket.create_connection((host, int(port)), timeout=min(left, 10.0))
        except OSError as exc:
            raise TransferError(f"cannot connect to {descriptor.address.decode()}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def open_send(self, descriptor: TransferDescriptor) -> SendHandle:
        regions = self._require_regions()
        link = self._link(self._connect(descriptor), descriptor.deadline_unix_s)
        return StreamSendHandle(link, regions, descriptor, corrupt=self.corrupt)

    def read(self, descriptor: TransferDescriptor, dst_units_local: dict[str, list[int]]) -> TransferResult:
        local_id = self._open_read(descriptor, dst_units_local)
        try:
            sock = self._connect(descriptor)
        except TransferError as exc:
            self.book.fail(local_id, str(exc))
            return self._finish_read(local_id)
        try:
            TcpLink(sock, descriptor.deadline_unix_s).send_control(
                {
                    "kind": "read",
                    "transfer_id": descriptor.transfer_id,
                    "secret": descriptor.secret,
                    "dst_units": dst_units_local,
                    "deadline_unix_s": descriptor.deadline_unix_s,
                }
            )
            source = self._source(sock)
            try:
                receive_into(self.book, local_id, source)
            finally:
                source.close()
        except OSError as exc:
            self.book.fail(local_id, f"read request failed: {exc}")
        finally:
            sock.close()
        return self._finish_read(local_id)

    def _serve(self, conn: socket.socket, first: dict[str, Any]) -> None:
        """A serving thread, for an authorized connection (the gate closes it afterwards)."""
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if first["kind"] == "open":
            self.book.begin(first["transfer_id"], first["secret"])
            source = self._source(conn)
            try:
                receive_into(self.book, first["transfer_id"], source)
            finally:
                source.close()
        else:
            self._serve_read(conn, first)

    def _serve_read(self, conn: socket.socket, request: dict[str, Any]) -> None:
        deadline = float(request["deadline_unix_s"])
        try:
            exposed = self.exposed_units(request["transfer_id"], request["secret"])
        except TransferError as exc:
            TcpLink(conn, deadline).send_control({"kind": "abort", "reason": str(exc)})
            return
        regions = self._require_regions()
        serve_read(
            lambda d: StreamSendHandle(
                self._link(conn, deadline),
                regions,
                d,
                corrupt=self.corrupt,
                send_open=False,
            ),
            regions,
            exposed,
            request,
            self.name,
            deadline,
        )

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.gate.close()
        self._listener.close()
        super().close()
