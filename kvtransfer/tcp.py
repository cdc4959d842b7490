"""`tcp`: one TCP connection per transfer. Frames: b"BKV1" + u32 length + JSON control message;
a data message is followed by its raw payloads, received straight into the destination units
(`recv_into` a memoryview of the tensor) and sent straight from the source units (`sendall`).
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
from kvtransfer.stream import StreamSendHandle, receive_into, serve_read
from kvtransfer.tcp_gate import HEADER as _HEADER
from kvtransfer.tcp_gate import MAGIC as _MAGIC
from kvtransfer.tcp_gate import ConnectionGate, GateLimits

MAX_CONTROL_BYTES = 4 << 20  # control frames after the first (a manifest) of an authorized transfer


def _bytes_of(view: torch.Tensor) -> memoryview:
    return memoryview(view.numpy()).cast("B")


class TcpLink:
    def __init__(self, sock: socket.socket, deadline_unix_s: float) -> None:
        self._sock, self._deadline = sock, deadline_unix_s

    def _arm(self) -> None:
        left = self._deadline - time.time()
        if left <= 0:
            raise TimeoutError("deadline expired")
        self._sock.settimeout(left)

    def send_control(self, msg: dict[str, Any]) -> None:
        body = json.dumps(msg, separators=(",", ":")).encode()
        self._arm()
        self._sock.sendall(_HEADER.pack(_MAGIC, len(body)) + body)

    def send_payloads(self, views: list[torch.Tensor]) -> None:
        self._arm()
        for view in views:
            self._sock.sendall(_bytes_of(view))

    def flush(self) -> None:
        pass  # sends are synchronous

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class TcpSource:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

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
        for view in views:
            self._recv_exact(_bytes_of(view), deadline_mono)


class TcpBackend(SharedBackend):
    name = "tcp"

    def __init__(self, host: str = "127.0.0.1", gate: GateLimits | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._listener = socket.create_server((host, 0), backlog=128)
        self._address = f"{host}:{self._listener.getsockname()[1]}".encode()
        self.gate = ConnectionGate(self._listener, self._authorize, self._serve, gate or GateLimits())

    @property
    def address(self) -> bytes:
        return self._address

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
        link = TcpLink(self._connect(descriptor), descriptor.deadline_unix_s)
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
            receive_into(self.book, local_id, TcpSource(sock))
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
            receive_into(self.book, first["transfer_id"], TcpSource(conn))
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
                TcpLink(conn, deadline),
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
