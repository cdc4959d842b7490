"""`create_backend(name, **options)`: the one place that maps backend names to classes."""

from __future__ import annotations

from typing import Any

from kvtransfer.base import TransferBackend, TransferError
from kvtransfer.local import LocalBackend
from kvtransfer.tcp import TcpBackend

BACKENDS = ("local", "tcp", "ucx")


def create_backend(name: str, **options: Any) -> TransferBackend:
    """Options shared by all: corrupt ((region, layer), test hook). Checksums are always on.
    tcp: host (listen/advertise host, default 127.0.0.1), gate (`tcp_gate.GateLimits`).
    ucx: none beyond UCX_* environment."""
    if name == "local":
        return LocalBackend(**options)
    if name == "tcp":
        return TcpBackend(**options)
    if name == "ucx":
        from kvtransfer.ucx import UcxBackend  # optional: ucxx

        return UcxBackend(**options)
    raise TransferError(f"unknown transfer backend {name!r}; choose one of {BACKENDS}")
