"""The router's Prometheus metrics (one registry per router, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("baton_router_requests", "Generate calls by final status", ["status"], registry=r)
        self.ttft = Histogram("baton_router_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("baton_router_tpot_seconds", "Time per output token after the first", buckets=FAST_BUCKETS + (0.25, 0.5, 1), registry=r)
        self.e2e = Histogram("baton_router_e2e_seconds", "Request latency end to end", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("baton_router_queue_depth", "Generate calls in flight", registry=r)
        self.prompt_tokens = Counter("baton_router_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter("baton_router_cached_tokens", "Prompt tokens served from a cache", registry=r)
        self.fetched_tokens = Counter("baton_router_fetched_tokens", "Prompt tokens fetched from a peer", registry=r)
        self.completion_tokens = Counter("baton_router_completion_tokens", "Generated tokens", registry=r)
        self.index_lookups = Histogram("baton_router_index_lookup_seconds", "Prefix index lookup latency", buckets=FAST_BUCKETS, registry=r)
        self.transfer_bytes = Counter("baton_router_transfer_bytes", "KV + state bytes moved prefill → decode", registry=r)
        self.transfer_saved_tokens = Counter(
            "baton_router_transfer_saved_tokens",
            "Prompt tokens not sent prefill → decode because the decode worker already held them (compute is not saved: see cached_tokens)",
            registry=r,
        )
        self.index_errors = Counter(
            "baton_router_index_errors", "Prefix index failures routed around (affinity + load)", ["op", "kind"], registry=r
        )
        self.events = Counter("baton_router_events", "Notable events (failovers, index unavailable)", ["event"], registry=r)

    def count(self, event: str) -> None:
        self.events.labels(event=event).inc()

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_index_lookup(self, seconds: float) -> None:
        self.index_lookups.observe(seconds)

    def observe_transfer(self, num_bytes: int) -> None:
        self.transfer_bytes.inc(max(0, num_bytes))

    def observe_transfer_saved(self, tokens: int) -> None:
        self.transfer_saved_tokens.inc(max(0, tokens))

    def index_error(self, op: str, kind: str) -> None:
        self.index_errors.labels(op=op, kind=kind).inc()

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def finish_request(self, status: str, state, elapsed_s: float) -> None:
        self.requests.labels(status=status).inc()
        self.e2e.observe(elapsed_s)
        emitted = len(state.emitted)
        self.completion_tokens.inc(emitted)
        self.cached_tokens.inc(state.cached_tokens)
        self.fetched_tokens.inc(state.fetched_tokens)
        if state.ttft_s is not None and emitted > 1:
            self.tpot.observe((elapsed_s - state.ttft_s) / (emitted - 1))

    def observe_prompt(self, tokens: int) -> None:
        self.prompt_tokens.inc(tokens)
