"""The door of the `tcp` backend: who gets a thread, and when.

One selector thread accepts connections and reads each one's first frame without blocking, into a
buffer that grows only with the bytes that actually arrived (never to the size a header announces).
A connection is handed to a serving thread only once its first frame is complete and `authorize`
accepts it (for a transfer: its transfer id and secret). Everything else is bounded and timed:
pending connections in total and per peer address, the first frame's size, the time a connection
may take to send it, and the number of serving threads. A stranger's idle connections therefore
cost a few hundred bytes each and no thread, and are closed after `handshake_timeout_s` or when
newer connections need their place.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
HEADER = struct.Struct("!4sI")
MAGIC = b"BKV1"


@dataclass(frozen=True, slots=True)
class GateLimits:
    max_pending: int = 256  # connections still sending their first frame
    max_pending_per_peer: int = 64  # ... from one IP address
    handshake_timeout_s: float = 5.0  # to send the whole first frame
    max_first_frame: int = 256 << 10  # bytes of the first frame's JSON body
    # Threads serving authorized connections (a layer-wise transfer holds one for a whole prefill).
    # More authorized connections wait in the pool's queue; their number is bounded by the
    # reservations this receiver holds (one sender per transfer), not by the peers.
    max_serving: int = 128


@dataclass(slots=True)
class _Pending:
    peer: str
    deadline: float
    data: bytearray = field(default_factory=bytearray)


Authorize = Callable[[dict[str, Any]], bool]
Serve = Callable[[socket.socket, dict[str, Any]], None]


class ConnectionGate:
    def __init__(self, listener: socket.socket, authorize: Authorize, serve: Serve, limits: GateLimits) -> None:
        self._listener, self._authorize, self._serve, self.limits = listener, authorize, serve, limits
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, _Pending] = {}
        self._per_peer: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=limits.max_serving, thread_name_prefix="tcp-serve")
        self._stopping = False
        self.refused = 0  # connections closed before being served (limits, timeouts, bad frames)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="tcp-gate", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _loop(self) -> None:
        while not self._stopping:
            try:
                events = self._selector.select(timeout=0.2)
            except OSError:
                return
            for key, _ in events:
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(key.fileobj)
            self._expire()
        for conn in list(self._pending):
            self._drop(conn)

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, so pending connections keep being read
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            peer = str(addr[0])
            # Full: the oldest pending connection makes room (a real sender's first frame follows
            # its connect within milliseconds, so idle strangers are the ones that go).
            if self._per_peer.get(peer, 0) >= self.limits.max_pending_per_peer:
                self._drop(next(c for c, s in self._pending.items() if s.peer == peer))
            if len(self._pending) >= self.limits.max_pending:
                self._drop(next(iter(self._pending)))
            conn.setblocking(False)
            self._pending[conn] = _Pending(peer, time.monotonic() + self.limits.handshake_timeout_s)
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        state = self._pending.get(conn)
        if state is None:
            return
        try:
            chunk = conn.recv(min(64 << 10, self._missing(state)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        state.data += chunk
        if len(state.data) >= HEADER.size:
            magic, length = HEADER.unpack_from(state.data)
            if magic != MAGIC or length > self.limits.max_first_frame:
                self._drop(conn)  # announced too much, or not our protocol: nothing was allocated
                return
            if len(state.data) == HEADER.size + length:
                self._admit(conn, state)

    def _missing(self, state: _Pending) -> int:
        if len(state.data) < HEADER.size:
            return HEADER.size - len(state.data)
        _, length = HEADER.unpack_from(state.data)
        return max(1, HEADER.size + length - len(state.data))

    def _admit(self, conn: socket.socket, state: _Pending) -> None:
        self._forget(conn)
        try:
            msg = json.loads(bytes(state.data[HEADER.size :]))
            admitted = isinstance(msg, dict) and self._authorize(msg)
        except Exception:  # noqa: BLE001 - malformed first frame
            admitted = False
        if not admitted:
            self.refused += 1
            conn.close()
            return
        conn.setblocking(True)
        self._pool.submit(self._serve_and_close, conn, msg)

    def _serve_and_close(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        try:
            self._serve(conn, msg)
        except Exception:  # noqa: BLE001 - the peer sees the connection close
            log.debug("tcp transfer connection failed", exc_info=True)
        finally:
            conn.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c, s in self._pending.items() if s.deadline < now]:
            self._drop(conn)

    def _forget(self, conn: socket.socket) -> None:
        state = self._pending.pop(conn, None)
        if state is not None:
            left = self._per_peer.get(state.peer, 1) - 1
            if left:
                self._per_peer[state.peer] = left
            else:
                self._per_peer.pop(state.peer, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: socket.socket) -> None:
        self._forget(conn)
        self.refused += 1
        conn.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(timeout=2.0)
        self._pool.shutdown(wait=False)
        self._selector.close()
