"""Prometheus `/metrics` over HTTP, the same way for the router and the workers."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server

from rpc.listen import ListenError


@dataclass
class MetricsServer:
    host: str
    port: int
    _server: object

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(host: str, port: int, *, registry: CollectorRegistry) -> MetricsServer:
    """Binds `host:port` now (0 = any free port) and serves /metrics; a taken port is named."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ListenError(f"metrics server cannot listen on {host}:{port}: {error.strerror}") from error
    return MetricsServer(host, server.server_port, server)

