"""The router's frozen config, built once from flags / environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from rpc.tls import TlsConfig


@dataclass(frozen=True, slots=True)
class RouterConfig:
    model: str
    listen: str = "127.0.0.1:50051"
    # Admin API (Scale, Drain, ListWorkers) listener; "" = none. Admin RPCs on the public listener
    # need an admin token. In-process routers (tests) take any free loopback port.
    admin_listen: str = "127.0.0.1:0"
    metrics_port: int = 0  # 0 = off
    insecure: bool = False  # allow listening beyond loopback without authentication
    index: str = "embedded"
    block_size: int = 16
    max_in_flight: int = 256  # admitted Generate calls before RESOURCE_EXHAUSTED
    max_tokens_limit: int = 0  # 0 = the model's context length
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
