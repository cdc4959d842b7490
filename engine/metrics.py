"""`EngineMetrics`: counters the engine keeps, and the dict `LLMEngine.metrics()` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.sequence import Sequence, Status


@dataclass(slots=True)
class EngineMetrics:
    steps: int = 0
    prompt_tokens: int = 0  # of admitted requests, counted once per request
    cached_tokens: int = 0  # of those, served from the prefix cache
    generated_tokens: int = 0
    requests: int = 0

    def count_admission(self, seq: Sequence) -> None:
        self.requests += 1
        self.prompt_tokens += seq.num_prompt_tokens
        self.cached_tokens += min(seq.num_cached_tokens, seq.num_prompt_tokens)

    def snapshot(self, engine: Any) -> dict[str, Any]:
        memory, scheduler = engine.memory, engine.scheduler
        statuses = [s.status for s in engine.sequences.values()]
        result: dict[str, Any] = {
            "steps": self.steps,
            "requests": self.requests,
            "num_waiting": len(scheduler.waiting),
            "num_running": len(scheduler.running),
            "num_pinned": statuses.count(Status.PINNED),
            "num_reserved": statuses.count(Status.RESERVED),
            "num_preemptions": scheduler.num_preemptions,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            "generated_tokens": self.generated_tokens,
            "pages_total": memory.pages.num_total,
            "pages_free": memory.pages.num_free,
            "pages_used": memory.pages.num_total - memory.pages.num_free,
            "slots_total": memory.live_slots.num_total,
            "slots_free": memory.live_slots.num_free,
            "slots_used": engine.config.live_slots - memory.live_slots.num_free,
            "checkpoints": 0,
            "checkpoint_slots_total": engine.config.cache_checkpoint_slots,
            "evictions": 0,
            "cached_pages": 0,
        }
        if engine.prefix_cache is not None:
            result.update(engine.prefix_cache.stats())
        result["state_copies"] = engine.cache.state_copies
        graphs = engine.runner.graphs
        result["cuda_graphs"] = len(graphs.graphs) if graphs is not None else 0
        result["cuda_graph_bytes"] = graphs.graph_bytes if graphs is not None else 0
        result["cuda_graph_replays"] = graphs.replays if graphs is not None else 0
        if getattr(engine, "spec", None) is not None:  # speculative decoding (engine/speculative)
            result.update(engine.spec.metrics.snapshot())
        return result
