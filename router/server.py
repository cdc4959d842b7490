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
from router.openai.server import RunningHttp, start_http
from router.pools.static import StaticPool
from router.service import AdminServicer, BatonServicer
from rpc import grpc_server
from rpc.auth import TokenAuth
from rpc.cluster_auth import ClusterCredential
from rpc.listen import ListenError, check_exposure, dial_host, split_host_port
from rpc.logs import configure_logging
from rpc.metrics_http import MetricsServer, serve_metrics
from rpc.signals import wait_in_main_thread
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
    http: RunningHttp | None = None

    @property
    def http_address(self) -> str:
        return self.http.address if self.http else ""

    def stop(self, grace_s: float = 1.0) -> None:
        if self.http is not None:
            self.http.stop()
        for server in self.servers:
            server.stop(grace_s).wait(grace_s + 1)
        if self.listeners is not None and self.listeners.metrics_server is not None:
            self.listeners.metrics_server.close()
        self.core.close()


def bind_router(config: RouterConfig) -> RouterListeners:
    """Check the listen addresses and bind the public, admin and metrics ports (raises ListenError
    naming the address)."""
    auth = TokenAuth.from_file(config.auth_tokens_file or os.environ.get("BATON_AUTH_TOKENS", ""))
    for what, listen in (
        ("router", config.listen), ("router admin API", config.admin_listen), ("router HTTP API", config.http_listen if ":" in config.http_listen else "")  # a bare port: loopback
    ):  # fmt: skip
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
    index = create_index(config.index, **_redis_options(config))
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
    if config.http_listen:
        try:
            running.http = start_http(core, listeners.auth, config.http_listen, config.max_prompt_bytes)
        except BaseException:
            running.stop(grace_s=0)
            raise
    log.info("router serving on %s (admin %s, metrics port %s, HTTP %s)", running.address, admin_address,
             metrics_port or "off", running.http_address or "off")  # fmt: skip
    return running


def _redis_options(config: RouterConfig) -> dict:
    return {} if config.index == "embedded" else {"key_prefix": config.redis_key_prefix}


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
    parser.add_argument(
        "--allow-special-tokens-in-content",
        action="store_true",
        help="chat: encode control-token text in messages (e.g. '<|im_start|>') as control tokens, not as text",
    )
    parser.add_argument("--auth-tokens", default=os.environ.get("BATON_AUTH_TOKENS", ""))
    parser.add_argument(
        "--redis-key-prefix",
        default=os.environ.get("BATON_REDIS_KEY_PREFIX", "baton"),
        help="prefix of every Redis key of the index (several deployments can share one Redis)",
    )
    limits = parser.add_argument_group("bounds on one request's work (INVALID_ARGUMENT beyond them)")
    limits.add_argument("--max-prompt-bytes", type=int, default=8 * 1024 * 1024, help="text / chat prompt bytes (also the gRPC message limit)")
    limits.add_argument("--max-prompt-tokens", type=int, default=0, help="0: the model's context window")
    limits.add_argument("--max-request-id-bytes", type=int, default=128)
    limits.add_argument("--max-session-id-bytes", type=int, default=256)
    limits.add_argument("--max-stop-strings", type=int, default=16)
    limits.add_argument("--max-stop-bytes", type=int, default=4096, help="all stop strings of a request together")
    limits.add_argument("--max-stop-token-ids", type=int, default=64)
    limits.add_argument("--max-session-bytes", type=int, default=256 * 1024 * 1024, help="memory the router keeps for sessions")
    limits.add_argument("--tokenize-threads", type=int, default=4, help="threads that tokenize large prompts")
    limits.add_argument("--tokenize-queue", type=int, default=16, help="large prompts waiting to tokenize before RESOURCE_EXHAUSTED")
    parser.add_argument(
        "--cluster-token-file", default="", help="the token worker RPCs demand (else BATON_CLUSTER_TOKEN)"
    )
    parser.add_argument(
        "--stall-timeout-s", type=float, default=5.0, help="no token or heartbeat this long: fail over"
    )
    parser.add_argument(
        "--prefill-progress-deadline-s", type=float, default=30.0, help="no prefill chunk this long: fail over"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        model=args.model,
        listen=args.listen,
        admin_listen=args.admin_listen,
        http_listen=args.http_listen,
        metrics_port=args.metrics_port,
        insecure=args.insecure,
        max_tokens_limit=args.max_tokens_limit,
        index=args.index,
        block_size=args.block_size,
        local_prefill_threshold=args.local_prefill_threshold,
        max_in_flight=args.max_in_flight,
        allow_special_tokens_in_content=args.allow_special_tokens_in_content,
        tls=TlsConfig.from_env(),
        auth_tokens_file=args.auth_tokens,
        redis_key_prefix=args.redis_key_prefix,
        max_prompt_bytes=args.max_prompt_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_request_id_bytes=args.max_request_id_bytes,
        max_session_id_bytes=args.max_session_id_bytes,
        max_stop_strings=args.max_stop_strings,
        max_stop_bytes=args.max_stop_bytes,
        max_stop_token_ids=args.max_stop_token_ids,
        max_session_bytes=args.max_session_bytes,
        tokenize_threads=args.tokenize_threads,
        tokenize_queue=args.tokenize_queue,
        cluster=ClusterCredential.from_env(args.cluster_token_file),
        stall_timeout_s=args.stall_timeout_s,
        prefill_progress_deadline_s=args.prefill_progress_deadline_s,
    )


def main(argv: list[str] | None = None) -> int:
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
    wait_in_main_thread(stopped)
    running.stop()
    return 0
