"""Starting the router: `python -m router` (static worker addresses) or in-process from
`baton serve` / tests with any pool."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc

from baton_pb.v1 import admin_pb2_grpc, public_pb2_grpc
from prefix_index.factory import create_index
from router.config import RouterConfig
from router.core import RouterCore
from router.flags import add_listen_flags
from router.metrics import RouterMetrics
from router.service import AdminServicer, BatonServicer
from rpc import grpc_server
from rpc.auth import TokenAuth
from rpc.listen import ListenError, check_exposure, dial_host, split_host_port
from rpc.logs import configure_logging
from rpc.metrics_http import MetricsServer, serve_metrics
from rpc.tls import TlsConfig

log = logging.getLogger(__name__)
PUBLIC_SERVICES = ("baton.v1.Baton",)
ADMIN_SERVICES = ("baton.v1.BatonAdmin",)


@dataclass
class RouterListeners:
    """Every port the router needs, bound and held before anything else starts (so a taken port
    fails the command before any worker is spawned); nothing is served until `start_router`."""

    public: grpc.Server
    admin: grpc.Server | None
    address: str
    admin_address: str
    auth: TokenAuth
    metrics: RouterMetrics
    metrics_server: MetricsServer | None = None

    def close(self) -> None:
        for server in (self.public, self.admin):
            if server is not None:
                server.stop(0)
        if self.metrics_server is not None:
            self.metrics_server.close()


@dataclass
class RunningRouter:
    core: RouterCore
    servers: list[grpc.Server]
    address: str
    admin_address: str
    metrics_port: int = 0
    listeners: RouterListeners | None = None

    def stop(self, grace_s: float = 1.0) -> None:
        for server in self.servers:
            server.stop(grace_s).wait(grace_s + 1)
        if self.listeners is not None and self.listeners.metrics_server is not None:
            self.listeners.metrics_server.close()
        self.core.close()


def bind_router(config: RouterConfig) -> RouterListeners:
    """Check the listen addresses and bind the public, admin and metrics ports (raises ListenError
    naming the address)."""
    auth = TokenAuth.from_file(config.auth_tokens_file or os.environ.get("BATON_AUTH_TOKENS", ""))
    for what, listen in (("router", config.listen), ("router admin API", config.admin_listen)):
        if listen:
            check_exposure(listen, authenticated=auth.enabled, insecure=config.insecure, what=what)
    public = _server(config)
    port = grpc_server.bind(public, config.listen, config.tls, "router")
    admin, admin_address = None, ""
    try:
        if config.admin_listen:
            admin = _server(config)
            admin_port = grpc_server.bind(admin, config.admin_listen, config.tls, "router admin API")
            admin_address = _dial_address(config.admin_listen, admin_port)
        listeners = RouterListeners(public, admin, _dial_address(config.listen, port), admin_address, auth, RouterMetrics())
        if config.metrics_port:  # 0 = off; the metrics server listens on the public host
            host, _ = split_host_port(config.listen)
            metrics_registry = listeners.metrics.registry
            listeners.metrics_server = serve_metrics(host or "0.0.0.0", config.metrics_port, registry=metrics_registry)
    except BaseException:
        public.stop(0)
        if admin is not None:
            admin.stop(0)
        raise
    return listeners


def start_router(config: RouterConfig, pool, listeners: RouterListeners | None = None) -> RunningRouter:
    listeners = listeners or bind_router(config)
    index = create_index(config.index)
    core = RouterCore(config, pool, index, metrics=listeners.metrics)
    core.registry.start()
    core.registry.report_unreachable()
    public, admin = listeners.public, listeners.admin
    public_pb2_grpc.add_BatonServicer_to_server(BatonServicer(core, listeners.auth), public)
    # On the public listener the admin API answers only callers with an admin token.
    admin_pb2_grpc.add_BatonAdminServicer_to_server(AdminServicer(core, listeners.auth, public_listener=True), public)
    grpc_server.add_health_and_reflection(public, PUBLIC_SERVICES + ADMIN_SERVICES)
    servers = [public]
    if admin is not None:
        admin_pb2_grpc.add_BatonAdminServicer_to_server(AdminServicer(core, listeners.auth), admin)
        grpc_server.add_health_and_reflection(admin, ADMIN_SERVICES)
        servers.append(admin)
    for server in servers:
        server.start()
    metrics_port = listeners.metrics_server.port if listeners.metrics_server else 0
    admin_address = listeners.admin_address or listeners.address
    running = RunningRouter(core, servers, listeners.address, admin_address, metrics_port, listeners)
    log.info("router serving on %s (admin %s, metrics port %s)", running.address, admin_address, metrics_port or "off")
    return running


def _dial_address(listen: str, port: int) -> str:
    host, _ = split_host_port(listen)
    host = dial_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server(config: RouterConfig) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_in_flight + 32, thread_name_prefix="router"),
        # gRPC takes the first value of a repeated option: drop the shared receive limit first.
        options=[o for o in grpc_server.SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"]
        + [("grpc.max_receive_message_length", config.max_prompt_bytes)],
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router", description="Baton router")
    parser.add_argument("--model", required=True, help="checkpoint directory (Hugging Face layout)")
    add_listen_flags(parser)
    parser.add_argument("--prefill", default="", help="ADDR[,ADDR...] (host:port or dns:///name:port)")
    parser.add_argument("--decode", required=True, help="ADDR[,ADDR...]")
    parser.add_argument("--index", default=os.environ.get("BATON_INDEX", "embedded"))
    parser.add_argument("--pool", default="static", choices=["static"])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--local-prefill-threshold", type=int, default=512)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--auth-tokens", default=os.environ.get("BATON_AUTH_TOKENS", ""))
    return parser


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        model=args.model,
        listen=args.listen,
        admin_listen=args.admin_listen,
        metrics_port=args.metrics_port,
        insecure=args.insecure,
        max_tokens_limit=args.max_tokens_limit,
        index=args.index,
        block_size=args.block_size,
        local_prefill_threshold=args.local_prefill_threshold,
        max_in_flight=args.max_in_flight,
        tls=TlsConfig.from_env(),
        auth_tokens_file=args.auth_tokens,
    )


def main(argv: list[str] | None = None) -> int:
    from router.pools.static import StaticPool

    configure_logging()
    args = arg_parser().parse_args(argv)
    split = lambda text: [a for a in text.split(",") if a]  # noqa: E731
    config = config_from_args(args)
    try:
        listeners = bind_router(config)  # every port held before anything else happens
        running = start_router(config, StaticPool(split(args.prefill), split(args.decode)), listeners)
    except (ListenError, ValueError, OSError) as error:
        log.error("router cannot start: %s", error)  # one line, no traceback
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    running.stop()
    return 0
