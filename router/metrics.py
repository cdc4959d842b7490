"""The router's Prometheus metrics (one registry per router, so tests can run several).

Two vocabularies for the same quantities:
- Baton's own (`baton_router_*`), kept for existing dashboards;
- vLLM's names, units and `model_name` label for what a request sees end to end (TTFT,
  inter-token latency, time per output token, e2e latency, prompt and generation tokens), so the
  dashboards and alerts SREs already run for vLLM work unchanged. Engine-level ones (running and
  waiting requests, KV cache usage, prefix-cache queries and hits) come from the workers
  (`worker/metrics.py`): counting them here as well would double every sum.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
EVENTS = ("failovers", "index_unavailable", "finished_claim_used")
MODEL = ["model_name"]


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.model_name = ""
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
        self.admission_rejections = Counter("baton_router_admission_rejections", "Generate calls refused because the router was full", registry=r)
        for event in EVENTS:  # present (at 0) before the first one, so dashboards and alerts resolve
            self.events.labels(event=event)
        # vLLM names and units (https://docs.vllm.ai/en/stable/usage/metrics/)
        self.vllm_ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", MODEL, buckets=LATENCY_BUCKETS, registry=r)
        self.vllm_itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", MODEL, buckets=TOKEN_BUCKETS, registry=r)
        self.vllm_tpot = Histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds (per request mean).", MODEL, buckets=TOKEN_BUCKETS, registry=r)
        self.vllm_e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", MODEL, buckets=LATENCY_BUCKETS, registry=r)
        self.vllm_prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", MODEL, registry=r)
        self.vllm_generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", MODEL, registry=r)
        self.vllm_request_success = Counter("vllm:request_success", "Count of successfully processed requests.", MODEL + ["finished_reason"], registry=r)

    def set_model_name(self, model_name: str) -> None:
        """Label every vLLM-named series with the served model (children exist from now on)."""
        self.model_name = model_name
        for family in (self.vllm_ttft, self.vllm_itl, self.vllm_tpot, self.vllm_e2e, self.vllm_prompt_tokens, self.vllm_generation_tokens):
            family.labels(model_name=model_name)

    def count(self, event: str) -> None:
        self.events.labels(event=event).inc()

    def count_admission_rejected(self) -> None:
        self.admission_rejections.inc()

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.vllm_ttft.labels(model_name=self.model_name).observe(seconds)

    def observe_inter_token(self, seconds: float, tokens: int) -> None:
        """`tokens` arrived together `seconds` after the previous ones: one gap per token."""
        if tokens <= 0:
            return
        histogram = self.vllm_itl.labels(model_name=self.model_name)
        for _ in range(tokens):
            histogram.observe(seconds / tokens)

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
        self.vllm_e2e.labels(model_name=self.model_name).observe(elapsed_s)
        emitted = len(state.emitted)
        self.completion_tokens.inc(emitted)
        self.vllm_generation_tokens.labels(model_name=self.model_name).inc(emitted)
        self.cached_tokens.inc(state.cached_tokens)
        self.fetched_tokens.inc(state.fetched_tokens)
        if status == "ok":
            reason = state.finish_reason or "stop"
            self.vllm_request_success.labels(model_name=self.model_name, finished_reason=reason).inc()
        if state.ttft_s is not None and emitted > 1:
            tpot = (elapsed_s - state.ttft_s) / (emitted - 1)
            self.tpot.observe(tpot)
            self.vllm_tpot.labels(model_name=self.model_name).observe(tpot)

    def observe_prompt(self, tokens: int) -> None:
        self.prompt_tokens.inc(tokens)
        self.vllm_prompt_tokens.labels(model_name=self.model_name).inc(tokens)
