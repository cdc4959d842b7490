"""Prometheus `/metrics` over HTTP, the same way for the router and the workers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def start_metrics_server(port: int, *, registry: CollectorRegistry | None = None, collector=None) -> int:
    """Serves /metrics on `port` (0 = any free port); returns the bound port. `collector` (a
    prometheus custom collector) is registered first when given."""
    registry = registry or CollectorRegistry()
    if collector is not None:
        registry.register(collector)
    server, _thread = start_http_server(port, registry=registry)
    return server.server_port
