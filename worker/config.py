"""Frozen configs of the serving processes, built once from CLI flags / environment."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from typing import Literal

from engine.engine_args import add_engine_flags, engine_config_from_args
from engine.engine_config import EngineConfig
from rpc.tls import TlsConfig

Role = Literal["prefill", "decode"]
DEFAULT_PORTS = {"prefill": (50061, 9101), "decode": (50071, 9102)}
WORKER_ENGINE_DEFAULTS = {"cache_bytes": 2 << 30}  # a worker's cache budget unless --memory-gb


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
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(**WORKER_ENGINE_DEFAULTS))
    max_queue: int = 64
    local_prefill_threshold: int = 512
    ready_file: str = ""
    tls: TlsConfig = field(default_factory=TlsConfig)

    @property
    def block_size(self) -> int:
        return self.engine.block_size

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
    parser.add_argument(
        "--max-queue", type=int, default=64, help="admitted requests before RESOURCE_EXHAUSTED"
    )
    parser.add_argument("--ready-file", default="", help="write the bound address here once serving")
    add_engine_flags(parser, WORKER_ENGINE_DEFAULTS)
    return parser


def worker_config_from_args(role: Role, argv: list[str] | None = None) -> WorkerConfig:
    parser = worker_arg_parser(role)
    args = parser.parse_args(argv)
    try:
        engine = engine_config_from_args(args, WORKER_ENGINE_DEFAULTS)
    except ValueError as error:
        parser.error(str(error))
    return WorkerConfig(
        role=role,
        model=args.model,
        listen=args.listen,
        advertise=args.advertise,
        transfer=args.transfer,
        worker_id=args.worker_id or f"{role}-{uuid.uuid4().hex[:8]}",
        metrics_port=args.metrics_port,
        index=args.index,
        engine=engine,
        max_queue=args.max_queue,
        ready_file=args.ready_file,
        tls=TlsConfig.from_env(),
    )
