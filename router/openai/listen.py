"""The `--http-listen` value: `PORT` (loopback), `HOST:PORT` or `[V6]:PORT`."""

from __future__ import annotations


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http-listen wants [HOST:]PORT, not {listen!r}")
    return host, int(port)
