"""CPU tests of the CUDA-graph path: the engine's decode and verify steps through a capture-free
`DecodeGraphs` (the static-buffer forward a graph captures, run eagerly)."""

from __future__ import annotations

from engine.cuda_graphs import DecodeGraphs
from engine.llm_engine import LLMEngine


def attach_capture_free_graphs(
    engine: LLMEngine, max_batch: int = 4, max_model_len: int = 256
) -> tuple[DecodeGraphs, list[int | None]]:
    """Attach the graphs to `engine`: (the graphs, a list that gets each run's step kind (`steps_of`))."""
    k = engine.config.num_speculative_tokens
    engine.runner.graphs = graphs = DecodeGraphs(
        engine.model,
        engine.cache,
        max_batch=max_batch,
        max_model_len=max_model_len,
        scratch_page=engine.memory.pages.allocate(1)[0],
        scratch_slot=engine.memory.live_slots.allocate(),
        verify_steps=k + 1 if k else 0,
        capture=False,
    )
    kinds: list[int | None] = []
    run = graphs.run
    graphs.run = lambda chunks: (kinds.append(graphs.steps_of(chunks)), run(chunks))[1]
    return graphs, kinds
