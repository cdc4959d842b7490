"""`local`: both ends in one process (tests, colocated prefill+decode); payloads are tensor copies."""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any

import torch

from kvtransfer.base import SendHandle, TransferDescriptor, TransferError, TransferResult
from kvtransfer.book import ReceiveBook
from kvtransfer.manifest import Manifest
from kvtransfer.shared_backend import SharedBackend
from kvtransfer.stream import StreamSendHandle, serve_read

_PEERS: weakref.WeakValueDictionary[bytes, LocalBackend] = weakref.WeakValueDictionary()
_IDS = itertools.count()
_PEERS_LOCK = threading.Lock()


class LocalLink:
    """Delivers the stream straight into the receiving book; closing before finish fails the transfer."""

    def __init__(self, book: ReceiveBook, transfer_id: str) -> None:
        self._book, self._id = book, transfer_id
        self._pending: list[torch.Tensor] = []
        self._ended = False

    def send_control(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "open":
            self._book.begin(self._id)
        elif kind == "data":
            self._pending = self._book.dst_views(self._id, msg["region"], msg["layer"], msg["runs"])
        elif kind == "finish":
            self._ended = True
            self._book.complete(self._id, Manifest.from_dict(msg["manifest"]))
        elif kind == "abort":
            self._ended = True
            self._book.fail(self._id, f"sender aborted: {msg['reason']}")

    def send_payloads(self, views: list[torch.Tensor]) -> None:
        if len(views) != len(self._pending):
            raise TransferError("payload count does not match the data header")
        for dst, src in zip(self._pending, views, strict=True):
            dst.copy_(src)
        self._pending = []

    def flush(self) -> None:
        pass  # sends are synchronous

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self._book.fail(self._id, "sender closed the transfer without finishing")


class LocalBackend(SharedBackend):
    name = "local"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._address = f"local:{next(_IDS)}".encode()
        with _PEERS_LOCK:
            _PEERS[self._address] = self

    @property
    def address(self) -> bytes:
        return self._address

    def open_send(self, descriptor: TransferDescriptor) -> SendHandle:
        peer = _peer(descriptor.address)
        link = LocalLink(peer.book, descriptor.transfer_id)
        return StreamSendHandle(
            link, self._require_regions(), descriptor, checksums=self.checksums, corrupt=self.corrupt
        )

    def read(self, descriptor: TransferDescriptor, dst_units_local: dict[str, list[int]]) -> TransferResult:
        peer = _peer(descriptor.address)
        local_id = self._open_read(descriptor, dst_units_local)
        try:
            exposed = peer.exposed_units(descriptor.transfer_id)
            request = {"transfer_id": local_id, "dst_units": dst_units_local}
            serve_read(
                lambda d: StreamSendHandle(
                    LocalLink(self.book, local_id),
                    peer._require_regions(),
                    d,
                    checksums=peer.checksums,
                    corrupt=peer.corrupt,
                    send_open=False,
                ),
                peer._require_regions(),
                exposed,
                request,
                self.name,
                descriptor.deadline_unix_s,
            )
        except TransferError as exc:
            self.book.fail(local_id, str(exc))
        return self._finish_read(local_id)

    def close(self) -> None:
        with _PEERS_LOCK:
            _PEERS.pop(self._address, None)
        super().close()


def _peer(address: bytes) -> LocalBackend:
    with _PEERS_LOCK:
        peer = _PEERS.get(address)
    if peer is None:
        raise TransferError(f"no local backend at address {address!r} (closed, or another process)")
    return peer
