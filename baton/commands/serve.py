"""`baton serve --model DIR --prefill N --decode M`: a whole Baton — the router and its prefill and
decode worker pools (Ray actors on a local cluster by default, `--address` for an existing one, or
`--pool process` for plain subprocesses) — until SIGINT / SIGTERM, then a clean shutdown: the router
stops first, then every worker drains and exits."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from baton.commands.scale import non_negative
from router.flags import add_listen_flags
from router.openai.listen import split_listen

log = logging.getLogger("baton.serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the router with prefill and decode worker pools")
    parser.add_argument("--model", required=True, help="checkpoint directory (Hugging Face layout) or a hub id in the local HF cache")
    parser.add_argument("--prefill", type=non_negative, default=1, help="prefill workers (default 1)")
    parser.add_argument("--decode", type=non_negative, default=1, help="decode workers (default 1)")
    parser.add_argument(
        "--pool", default="ray", choices=["ray", "process"], help="how workers run (default ray)"
    )
    parser.add_argument("--address", default=None, help="existing Ray cluster (default: start a local one)")
    parser.add_argument(
        "--index", default=os.environ.get("BATON_INDEX", "embedded"), help="embedded | redis://HOST:PORT/DB"
    )
    parser.add_argument(
        "--transfer", default="tcp", choices=["tcp", "ucx", "local"], help="KV transfer backend"
    )
    add_listen_flags(parser)
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0,
        help="seconds each worker may take to load its model and serve (default 180)",
    )  # fmt: skip
    parser.add_argument("--memory-gb", type=float, default=2.0, help="KV + state budget per worker")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per worker")
    parser.add_argument("--ep", type=int, default=1, help="expert-parallel ranks per worker (same processes)")
    parser.set_defaults(func=run)


def parallel_worker_args(tp: int, ep: int) -> tuple[str, ...]:
    return (*(("--tp", str(tp)) if tp > 1 else ()), *(("--ep", str(ep)) if ep > 1 else ()))


def check_args(args: argparse.Namespace) -> str | None:
    if args.address and args.pool != "ray":
        return "--address names a Ray cluster; it needs --pool ray"
    if args.decode < 1:
        return "--decode must be >= 1 (decode workers stream every answer)"
    from engine.model_source import resolve_model  # lazy: CLI startup (huggingface_hub only for serve)

    try:
        resolve_model(args.model)  # a folder, or a hub id in the local Hugging Face cache
    except FileNotFoundError as error:
        return str(error)
    if args.memory_gb <= 0:
        return "--memory-gb must be > 0"
    from engine.parallel.config import ParallelConfig  # lazy: CLI startup

    try:
        ParallelConfig(args.tp, args.ep)
    except ValueError as error:
        return f"--tp/--ep: {error}"
    if max(args.tp, args.ep) > 1 and args.prefill:
        return "--tp/--ep > 1: multi-rank workers do not ship KV yet; use --prefill 0"
    if args.http_listen:
        try:
            split_listen(args.http_listen)
        except ValueError as error:
            return str(error)
    if args.startup_timeout <= 0:
        return "--startup-timeout must be > 0"
    if args.metrics_port < 0 or args.max_tokens_limit < 0:
        return "--metrics-port and --max-tokens-limit must be >= 0"
    return None


def run(args: argparse.Namespace) -> int:
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from router.config import RouterConfig  # lazy: CLI startup
    from router.local_cluster import ClusterSpec, LocalCluster  # lazy: CLI startup
    from router.pools import PoolError  # lazy: CLI startup
    from rpc.logs import configure_logging  # lazy: CLI startup
    from rpc.tls import TlsConfig  # lazy: CLI startup

    configure_logging()
    router_config = RouterConfig(
        model=args.model, listen=args.listen, admin_listen=args.admin_listen, http_listen=args.http_listen,
        metrics_port=args.metrics_port, insecure=args.insecure, max_tokens_limit=args.max_tokens_limit, index=args.index,
        tls=TlsConfig.from_env(), auth_tokens_file=os.environ.get("BATON_AUTH_TOKENS", ""),
    )  # fmt: skip
    spec = ClusterSpec(
        model=args.model, prefill=args.prefill, decode=args.decode, transfer=args.transfer, index=args.index,
        pool=args.pool, ray_address=args.address, memory_gb=args.memory_gb, router=router_config,
        startup_timeout_s=args.startup_timeout,
        worker_args=parallel_worker_args(args.tp, args.ep),
    )  # fmt: skip
    cluster = LocalCluster(spec)
    try:
        try:
            cluster.start()
        except (PoolError, TimeoutError, OSError, RuntimeError, ValueError) as error:
            log.error("baton serve cannot start: %s", error)  # one line, no traceback
            return 1
        # After start: ray.init installs signal handlers of its own in the driver.
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        print_endpoints(cluster)
        while not stop.wait(0.5):
            pass
        log.info("shutting down: router first, then the workers drain")
    finally:
        cluster.stop()
    return 0


def print_endpoints(cluster) -> None:
    print(f"router   {cluster.address}")
    if cluster.admin_address != cluster.address:
        print(f"admin    {cluster.admin_address}")
    if cluster.router.http_address:
        print(f"http     http://{cluster.router.http_address}/v1  (OpenAI-compatible)")
    if cluster.router.metrics_port:
        print(f"metrics  {cluster.address.rpartition(':')[0]}:{cluster.router.metrics_port}")
    metrics_ports = {h.address: h.info.metrics_port for h in cluster.router.core.registry.workers()}
    for member in sorted(cluster.pool.members(), key=lambda m: (m.role, m.worker_id)):
        port = metrics_ports.get(member.address, 0)
        metrics = f"  metrics {member.address.rpartition(':')[0]}:{port}" if port else ""
        print(f"{member.role:<8} {member.worker_id:<12} {member.address}{metrics}")
    print("Ctrl-C to stop.", flush=True)
