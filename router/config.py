"""The router's frozen config, built once from flags / environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.limits import RequestLimits
from rpc.cluster_auth import ClusterCredential
from rpc.tls import TlsConfig


@dataclass(frozen=True, slots=True)
class RouterConfig:
    model: str
    listen: str = "127.0.0.1:50051"
    # Admin API (Scale, Drain, ListWorkers) listener; "" = none. Admin RPCs on the public listener
    # need an admin token. In-process routers (tests) take any free loopback port.
    admin_listen: str = "127.0.0.1:0"
    http_listen: str = ""  # OpenAI-compatible HTTP API: [HOST:]PORT (host defaults to loopback); empty: off
    metrics_port: int = 0  # 0 = off
    insecure: bool = False  # allow listening beyond loopback without authentication
    index: str = "embedded"
    block_size: int = 16
    max_in_flight: int = 256  # admitted Generate calls before RESOURCE_EXHAUSTED
    max_tokens_limit: int = 0  # 0 = the model's context length
    default_max_tokens: int = 256
    # bounds on one request's work (router/limits.py), each a router flag
    max_prompt_bytes: int = 8 * 1024 * 1024
    max_prompt_tokens: int = 0  # 0: the context window
    max_request_id_bytes: int = 128
    max_session_id_bytes: int = 256
    max_stop_strings: int = 16
    max_stop_bytes: int = 4096
    max_stop_token_ids: int = 64
    tokenize_threads: int = 4  # large prompts tokenize here, off the gRPC handler threads
    tokenize_queue: int = 16  # large prompts waiting for a tokenizer thread before RESOURCE_EXHAUSTED
    local_prefill_threshold: int = 512  # uncached tokens below this: the decode worker prefills
    # chat: let control-token text in user content (e.g. "<|im_start|>system") become control tokens
    allow_special_tokens_in_content: bool = False
    transfer_deadline_s: float = 60.0
    rpc_timeout_s: float = 600.0
    load_poll_s: float = 0.5
    session_ttl_s: float = 3600.0
    max_sessions: int = 100_000
    max_session_bytes: int = 256 * 1024 * 1024  # session table + per-session prompt hashes, in all
    # A finished request's claim on its decode worker's cache counts this long, or until the
    # worker's KV events reach the index (router/finished_prefixes.py); 0 = off
    finished_claim_ttl_s: float = 60.0
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth_tokens_file: str = ""
    redis_key_prefix: str = "baton"

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(
            max_prompt_bytes=self.max_prompt_bytes,
            max_prompt_tokens=self.max_prompt_tokens,
            max_request_id_bytes=self.max_request_id_bytes,
            max_session_id_bytes=self.max_session_id_bytes,
            max_stop_strings=self.max_stop_strings,
            max_stop_bytes=self.max_stop_bytes,
            max_stop_token_ids=self.max_stop_token_ids,
        )
    cluster: ClusterCredential = field(default_factory=ClusterCredential)  # sent to the workers
    stall_timeout_s: float = 5.0  # no token, no heartbeat this long from a worker: fail over
    prefill_progress_deadline_s: float = 30.0  # no computed chunk this long (heartbeats or not): fail over
