"""Building gRPC servers and channels the same way everywhere: health checking, reflection,
message-size limits, optional (mutual) TLS."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rpc.cluster_auth import ClusterCredential, ClusterTokenClientInterceptor
from rpc.listen import ListenError
from rpc.tls import TlsConfig

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
# Servers never share a port: with gRPC's default SO_REUSEPORT a second server on a taken port
# starts without error and the kernel splits connections between the two.
SERVER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]

# (add_servicer_to_server function, servicer, full service name)
ServiceBinding = tuple[Callable, object, str]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS for a server; with `tls.mutual`, a client without a certificate signed by the CA is
    refused during the handshake (before any RPC runs)."""
    key_pair = [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())]
    if tls.mutual:
        return grpc.ssl_server_credentials(key_pair, Path(tls.ca).read_bytes(), require_client_auth=True)
    return grpc.ssl_server_credentials(key_pair)


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Verifies the server against `tls.ca` (system roots without one) and presents our own
    certificate when we have one (needed by mutual-TLS servers)."""
    root = Path(tls.ca).read_bytes() if tls.ca else None
    if tls.enabled:
        return grpc.ssl_channel_credentials(root, Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())
    return grpc.ssl_channel_credentials(root)


def add_health_and_reflection(server, names: Sequence[str]) -> health.HealthServicer:
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return health_servicer


def bind(server, listen: str, tls: TlsConfig, what: str = "gRPC server") -> int:
    """Binds (and holds) `listen` now, before the server starts; a taken port is named."""
    try:
        port = (
            server.add_secure_port(listen, server_credentials(tls))
            if tls.enabled
            else server.add_insecure_port(listen)
        )
    except RuntimeError as error:
        raise ListenError(f"{what} cannot listen on {listen}: address already in use or unavailable") from error
    if port == 0:
        raise ListenError(f"{what} cannot listen on {listen}: address already in use or unavailable")
    return port


def set_not_serving(health_servicer: health.HealthServicer, names: Sequence[str]) -> None:
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def insecure_or_tls_channel(
    address: str, tls: TlsConfig | None = None, cluster: ClusterCredential | None = None
) -> grpc.Channel:
    """A channel to `address`; with a `cluster` token every call carries it (calls to workers)."""
    if tls and tls.ca:
        channel = grpc.secure_channel(address, channel_credentials(tls), options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    if cluster is not None and cluster.token:
        return grpc.intercept_channel(channel, ClusterTokenClientInterceptor(cluster))
    return channel
