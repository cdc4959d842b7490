"""The router's frozen config, built once from flags / environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from rpc.cluster_auth import ClusterCredential
from rpc.tls import TlsConfig


@dataclass(frozen=True, slots=True)
class RouterConfig:
    model: str
    listen: str = "0.0.0.0:50051"
    admin_listen: str = ""  # empty: the admin service shares the public port
    metrics_port: int = 0
    index: str = "embedded"
    block_size: int = 16
    max_in_flight: int = 256  # admitted Generate calls before RESOURCE_EXHAUSTED
    max_tokens_limit: int = 8192
    default_max_tokens: int = 256
    max_prompt_bytes: int = 8 * 1024 * 1024
    local_prefill_threshold: int = 512  # uncached tokens below this: the decode worker prefills
    transfer_deadline_s: float = 60.0
    rpc_timeout_s: float = 600.0
    load_poll_s: float = 0.5
    session_ttl_s: float = 3600.0
    max_sessions: int = 100_000
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth_tokens_file: str = ""
    cluster: ClusterCredential = field(default_factory=ClusterCredential)  # sent to the workers
    stall_timeout_s: float = 5.0  # no token, no heartbeat this long from a worker: fail over
    prefill_progress_deadline_s: float = 30.0  # no computed chunk this long (heartbeats or not): fail over
