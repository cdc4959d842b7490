"""Frozen configs of the serving processes, built once from CLI flags / environment."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from typing import Literal

from rpc.tls import TlsConfig

Role = Literal["prefill", "decode"]
DEFAULT_PORTS = {"prefill": (50061, 9101), "decode": (50071, 9102)}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    role: Role
    model: str
    listen: str
    advertise: str = ""
    transfer: str = "tcp"
    worker_id: str = ""
    metrics_port: int = 0
    index: str = "embedded"
    block_size: int = 16
    max_pages: int = 0  # 0 = from the memory budget
    memory_gb: float = 2.0
    max_queue: int = 64
    local_prefill_threshold: int = 512
    prefix_cache: bool = True
    spec_tokens: int = 0  # MTP speculative decoding: drafts per step (0 = off; needs an MTP head)
    tp: int = 1  # tensor-parallel ranks: one process per device, rank 0 serves (engine/parallel)
    ep: int = 1  # expert-parallel ranks over the same processes
    ready_file: str = ""
    redis_key_prefix: str = "baton"
    tls: TlsConfig = field(default_factory=TlsConfig)

    @property
    def address(self) -> str:
        return self.advertise or self.listen.replace("0.0.0.0", "127.0.0.1")


def worker_arg_parser(role: Role) -> argparse.ArgumentParser:
    port, metrics_port = DEFAULT_PORTS[role]
    parser = argparse.ArgumentParser(prog=f"python -m {role}_worker", description=f"Baton {role} worker")
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--listen", default=f"0.0.0.0:{port}", help="gRPC host:port (port 0 = any free port)")
    parser.add_argument("--advertise", default="", help="host:port that peers and the router dial")
    parser.add_argument("--transfer", default="tcp", choices=["tcp", "ucx", "local"])
    parser.add_argument("--worker-id", default="")
    parser.add_argument("--metrics-port", type=int, default=metrics_port, help="Prometheus /metrics; 0 = off")
    parser.add_argument("--index", default=os.environ.get("BATON_INDEX", "embedded"))
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-pages", type=int, default=0)
    parser.add_argument("--memory-gb", type=float, default=2.0, help="KV + state budget")
    parser.add_argument(
        "--max-queue", type=int, default=64, help="admitted requests before RESOURCE_EXHAUSTED"
    )
    parser.add_argument("--ready-file", default="", help="write the bound address here once serving")
    parser.add_argument(
        "--spec-tokens",
        type=int,
        default=0,
        choices=range(5),
        metavar="K",
        help="speculative decoding with the checkpoint's MTP head: K drafts per step (0-4; 0 = off)",
    )
    parser.add_argument(
        "--redis-key-prefix",
        default=os.environ.get("BATON_REDIS_KEY_PREFIX", "baton"),
        help="prefix of every Redis key of the index (must match the router's)",
    )
    parser.add_argument("--no-prefix-cache", action="store_true", help="recompute every prompt (benchmarks)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (one process per device)")
    parser.add_argument("--ep", type=int, default=1, help="expert-parallel ranks (over the same processes)")
    return parser


def worker_config_from_args(role: Role, argv: list[str] | None = None) -> WorkerConfig:
    args = worker_arg_parser(role).parse_args(argv)
    return WorkerConfig(
        role=role,
        model=args.model,
        listen=args.listen,
        advertise=args.advertise,
        transfer=args.transfer,
        worker_id=args.worker_id or f"{role}-{uuid.uuid4().hex[:8]}",
        metrics_port=args.metrics_port,
        index=args.index,
        block_size=args.block_size,
        max_pages=args.max_pages,
        memory_gb=args.memory_gb,
        max_queue=args.max_queue,
        ready_file=args.ready_file,
        redis_key_prefix=args.redis_key_prefix,
        prefix_cache=not args.no_prefix_cache,
        spec_tokens=args.spec_tokens,
        tp=args.tp,
        ep=args.ep,
        tls=TlsConfig.from_env(),
    )
