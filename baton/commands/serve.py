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
from engine.engine_args import (
    GIB,
    add_engine_flags,
    engine_argv,
    engine_config_from_args,
    given_engine_options,
)
from router.flags import add_listen_flags
from router.openai.listen import split_listen

log = logging.getLogger("baton.serve")
SERVE_ENGINE_DEFAULTS = {"cache_bytes": 2 << 30}


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
    add_engine_flags(parser, SERVE_ENGINE_DEFAULTS)  # every worker's engine: the workers' own flags
    pools = parser.add_argument_group("per-pool parallelism (default: --tp / --ep for both pools)")
    for role in ("prefill", "decode"):
        for kind in ("tp", "ep"):
            pools.add_argument(
                f"--{role}-{kind}", type=int, default=None, metavar="N",
                help=f"--{kind} of the {role} workers only",
            )  # fmt: skip
    parser.set_defaults(func=run)


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
    try:
        engine = engine_config_from_args(args, SERVE_ENGINE_DEFAULTS)
    except ValueError as error:
        return str(error)
    for role in ("prefill", "decode"):
        try:
            pool_parallel(args, engine, role)
        except ValueError as error:
            return f"--{role}-tp/--{role}-ep: {error}"
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
    from router.local_cluster import LocalCluster  # lazy: CLI startup
    from router.pools import PoolError  # lazy: CLI startup
    from rpc.logs import configure_logging  # lazy: CLI startup
    from rpc.tls import TlsConfig  # lazy: CLI startup

    configure_logging()
    router_config = RouterConfig(
        model=args.model, block_size=engine_config_from_args(args, SERVE_ENGINE_DEFAULTS).block_size,
        listen=args.listen, admin_listen=args.admin_listen, http_listen=args.http_listen,
        metrics_port=args.metrics_port, insecure=args.insecure, max_tokens_limit=args.max_tokens_limit, index=args.index,
        tls=TlsConfig.from_env(), auth_tokens_file=os.environ.get("BATON_AUTH_TOKENS", ""),
    )  # fmt: skip
    spec = cluster_spec(args, router_config)
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


def cluster_spec(args: argparse.Namespace, router_config):
    """The workers get serve's engine flags back as their own flags (same names, one definition)."""
    from router.local_cluster import ClusterSpec  # lazy: CLI startup

    engine = engine_config_from_args(args, SERVE_ENGINE_DEFAULTS)
    given = given_engine_options(args)
    given.pop("cache_bytes", None)  # travels as ClusterSpec.memory_gb
    return ClusterSpec(
        model=args.model, prefill=args.prefill, decode=args.decode, transfer=args.transfer, index=args.index,
        pool=args.pool, ray_address=args.address, memory_gb=engine.cache_bytes / GIB,
        worker_args=tuple(engine_argv(given)), router=router_config, gpus_per_worker=ray_gpus(engine),
        gpus_per_role={role: n for role in ("prefill", "decode") if (n := ray_rank_gpus(args, engine, role))},
        startup_timeout_s=args.startup_timeout,
        prefill_args=pool_args(args, engine, "prefill"), decode_args=pool_args(args, engine, "decode"),
    )  # fmt: skip


def pool_parallel(args: argparse.Namespace, engine, role: str):
    """One pool's ParallelConfig: its own --{role}-tp/--{role}-ep, else --tp/--ep."""
    from engine.parallel.config import ParallelConfig  # lazy: CLI startup

    tp, ep = getattr(args, f"{role}_tp"), getattr(args, f"{role}_ep")
    return ParallelConfig(engine.tp if tp is None else tp, engine.ep if ep is None else ep)


def pool_args(args: argparse.Namespace, engine, role: str) -> tuple[str, ...]:
    """The pool's --tp/--ep when they differ from every worker's (after worker_args, so they win)."""
    parallel = pool_parallel(args, engine, role)
    if (parallel.tp, parallel.ep) == (engine.tp, engine.ep):
        return ()
    return ("--tp", str(parallel.tp), "--ep", str(parallel.ep))


def ray_gpus(engine) -> float | None:
    """A Ray actor on cuda asks for its memory fraction of a GPU, so a prefill and a decode worker
    can share one (Ray also sets the actor's CUDA_VISIBLE_DEVICES to that GPU)."""
    if engine.device.startswith("cuda") and engine.gpu_memory_utilization is not None:
        return engine.gpu_memory_utilization
    return None


def ray_rank_gpus(args: argparse.Namespace, engine, role: str) -> float | None:
    """A worker of several ranks on cuda asks Ray for one whole GPU per rank (its ranks run on
    cuda:0..N-1 of the GPUs Ray makes visible to it); None: `ray_gpus` decides."""
    world = pool_parallel(args, engine, role).world_size
    return float(world) if engine.device.startswith("cuda") and world > 1 else None


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
