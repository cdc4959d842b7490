"""Frozen configs of the serving processes, built once from CLI flags / environment."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from typing import Literal

from engine.engine_args import add_engine_flags, engine_config_from_args
from engine.engine_config import EngineConfig
from rpc.cluster_auth import ClusterCredential
from rpc.tls import TlsConfig

Role = Literal["prefill", "decode"]
DEFAULT_PORTS = {"prefill": (50061, 9101), "decode": (50071, 9102)}
METRICS_ANY_PORT = -1
WORKER_ENGINE_DEFAULTS = {"cache_bytes": 2 << 30}  # a worker's cache budget unless --memory-gb


def metrics_port_flag(text: str) -> int:
    """`--metrics-port`: a port, 0 = off, or `any` (a free port, reported in GetLoad)."""
    if text == "any":
        return METRICS_ANY_PORT
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port, 0 (off) or 'any', got {text}")
    return port


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    role: Role
    model: str
    listen: str
    advertise: str = ""
    transfer: str = "tcp"
    worker_id: str = ""
    metrics_port: int = 0  # 0 = off, METRICS_ANY_PORT = any free port
    insecure: bool = False  # allow listening beyond loopback without mutual TLS
    index: str = "embedded"
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(**WORKER_ENGINE_DEFAULTS))
    max_queue: int = 64
    local_prefill_threshold: int = 512
    ready_file: str = ""
    redis_key_prefix: str = "baton"
    tls: TlsConfig = field(default_factory=TlsConfig)
    cluster: ClusterCredential = field(default_factory=ClusterCredential)
    max_reservation_s: float = 60.0  # longer Reserve deadlines are clamped to this
    tenant_reservation_share: float = 0.5  # of the state slots, held by one tenant's reservations
    heartbeat_s: float = 1.0  # liveness beat on token/progress streams while nothing else is sent
    # Staging per rank for transfers from a prefill worker of another TP degree (worker/reshard.py)
    reshard_staging_tokens: int = 16384
    reshard_staging_slots: int = 4

    @property
    def block_size(self) -> int:
        return self.engine.block_size

    @property
    def address(self) -> str:
        return self.advertise or self.listen.replace("0.0.0.0", "127.0.0.1")

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")


def worker_arg_parser(role: Role) -> argparse.ArgumentParser:
    port, metrics_port = DEFAULT_PORTS[role]
    parser = argparse.ArgumentParser(prog=f"python -m {role}_worker", description=f"Baton {role} worker")
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument(
        "--listen", default=f"127.0.0.1:{port}",
        help="gRPC host:port (port 0 = any free port); beyond loopback needs mutual TLS or --insecure",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="allow listening beyond loopback without mutual TLS (logged as a warning)",
    )  # fmt: skip
    parser.add_argument("--advertise", default="", help="host:port that peers and the router dial")
    parser.add_argument("--transfer", default="tcp", choices=["tcp", "ucx", "local"])
    parser.add_argument("--worker-id", default="")
    parser.add_argument(
        "--metrics-port", type=metrics_port_flag, default=metrics_port,
        help="Prometheus /metrics on the --listen host; 0 = off, 'any' = a free port",
    )  # fmt: skip
    parser.add_argument("--index", default=os.environ.get("BATON_INDEX", "embedded"))
    parser.add_argument(
        "--max-queue", type=int, default=64, help="admitted requests before RESOURCE_EXHAUSTED"
    )
    parser.add_argument("--ready-file", default="", help="write the bound address here once serving")
    parser.add_argument(
        "--redis-key-prefix",
        default=os.environ.get("BATON_REDIS_KEY_PREFIX", "baton"),
        help="prefix of every Redis key of the index (must match the router's)",
    )
    parser.add_argument(
        "--cluster-token-file",
        default="",
        help="file holding the cluster token that worker RPCs demand (else BATON_CLUSTER_TOKEN)",
    )
    parser.add_argument(
        "--max-reservation-s", type=float, default=60.0, help="longest Reserve deadline (longer: clamped)"
    )
    parser.add_argument(
        "--tenant-reservation-share",
        type=float,
        default=0.5,
        help="fraction of the state slots one tenant's pending reservations may hold",
    )
    parser.add_argument("--heartbeat-s", type=float, default=1.0, help="liveness beat interval on streams")
    parser.add_argument(
        "--reshard-staging-tokens", type=int, default=16384,
        help="decode: KV positions per rank staged for senders of another --tp (allocated on first use)",
    )  # fmt: skip
    parser.add_argument(
        "--reshard-staging-slots", type=int, default=4,
        help="decode: DeltaNet states per rank staged for senders of another --tp (resharded transfers in flight)",
    )  # fmt: skip
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
        insecure=args.insecure,
        index=args.index,
        engine=engine,
        max_queue=args.max_queue,
        ready_file=args.ready_file,
        redis_key_prefix=args.redis_key_prefix,
        tls=TlsConfig.from_env(),
        cluster=ClusterCredential.from_env(args.cluster_token_file),
        max_reservation_s=_positive("--max-reservation-s", args.max_reservation_s),
        tenant_reservation_share=_share(args.tenant_reservation_share),
        heartbeat_s=_positive("--heartbeat-s", args.heartbeat_s),
        reshard_staging_tokens=int(_positive("--reshard-staging-tokens", args.reshard_staging_tokens)),
        reshard_staging_slots=int(_positive("--reshard-staging-slots", args.reshard_staging_slots)),
    )


def _positive(flag: str, value: float) -> float:
    if not 0 < value < float("inf"):
        raise SystemExit(f"{flag} must be a positive number, got {value}")
    return value


def _share(value: float) -> float:
    if not 0 < value <= 1:
        raise SystemExit(f"--tenant-reservation-share must be in (0, 1], got {value}")
    return value
