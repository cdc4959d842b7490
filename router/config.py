"""The router's frozen config, built once from flags / environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from rpc.tls import TlsConfig


@dataclass(frozen=True, slots=True)
class RouterConfig:
    model: str
    listen: str = "0.0.0.0:50051"
    admin_listen: str = ""  # empty: the admin service shares the public port
    http_listen: str = ""  # OpenAI-compatible HTTP API: [HOST:]PORT (host defaults to loopback); empty: off
    metrics_port: int = 0
    index: str = "embedded"
    block_size: int = 16
    max_in_flight: int = 256  # admitted Generate calls before RESOURCE_EXHAUSTED
    max_tokens_limit: int = 8192
    default_max_tokens: int = 256
    max_prompt_bytes: int = 8 * 1024 * 1024
    local_prefill_threshold: int = 512  # uncached tokens below this: the decode worker prefills
    # chat: let control-token text in user content (e.g. "<|im_start|>system") become control tokens
    allow_special_tokens_in_content: bool = False
    transfer_deadline_s: float = 60.0
    rpc_timeout_s: float = 600.0
    load_poll_s: float = 0.5
    session_ttl_s: float = 3600.0
    max_sessions: int = 100_000
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth_tokens_file: str = ""
