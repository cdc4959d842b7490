"""Overlap scheduling (engine/overlap.py): the order of a step's events shows step N+1 planned before
step N's tokens are read, and the engine's behaviour tests hold with overlap on (it is the GPU
default; on the CPU it is optional): greedy parity, batch == alone, preemption, aborts, stops and
logprobs, prefix cache on == off, the disaggregation hooks."""

from __future__ import annotations

import functools

import pytest

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.engine import test_engine_hooks as hooks
from tests.engine import test_generate_parity as parity
from tests.engine import test_prefix_cache as prefix
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(600)


def run_traced(overlap: bool) -> tuple[list[tuple[str, int]], dict[str, list[int]]]:
    engine = LLMEngine(
        tiny_checkpoint("qwen3_next"),
        EngineConfig(
            enable_prefix_cache=False, num_pages=64, prefill_chunk_size=16, overlap_schedule=overlap
        ),
    )
    events: list[tuple[str, int]] = []
    engine.step_trace = lambda event, step: events.append((event, step))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    for i, length in enumerate((5, 30, 11)):
        engine.add_request(f"r{i}", parity.prompt(length, seed=40 + i), params)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return events, tokens


def test_next_step_is_scheduled_before_this_steps_tokens_are_read() -> None:
    events, tokens = run_traced(overlap=True)
    reads = [step for event, step in events if event == "read"]
    assert len(reads) >= 6
    for step in reads[:-1]:  # every step that had a successor
        assert events.index(("schedule", step + 1)) < events.index(("read", step)), events
        assert events.index(("launch", step)) < events.index(("schedule", step + 1)), events
    serial_events, serial_tokens = run_traced(overlap=False)
    assert serial_tokens == tokens  # same greedy tokens either way
    serial_reads = [step for event, step in serial_events if event == "read"]
    for step in serial_reads[:-1]:  # without overlap, step N+1 is planned only after N is read
        assert serial_events.index(("read", step)) < serial_events.index(("schedule", step + 1))


@pytest.fixture
def overlap_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every EngineConfig built during the test defaults to overlap scheduling on."""
    original = EngineConfig.__post_init__

    def forced(self: EngineConfig) -> None:
        original(self)
        if self.overlap_schedule is None:
            object.__setattr__(self, "overlap_schedule", True)

    monkeypatch.setattr(EngineConfig, "__post_init__", forced)
    assert LLMEngine(tiny_checkpoint("qwen3_5_text"), EngineConfig(num_pages=32)).overlap


ENGINE_TESTS = {
    "greedy_equals_transformers": functools.partial(
        parity.test_greedy_64_tokens_equal_transformers_generate, "qwen3_next"
    ),
    "chunked_prefill": functools.partial(parity.test_chunked_prefill_equals_one_shot, "qwen3_5_moe_text"),
    "batch_alone_preemption": parity.test_batch_equals_each_request_alone_and_preemption_recomputes_exactly,
    "abort": parity.test_abort_at_any_time_frees_everything,
    "stops_and_logprobs": parity.test_stop_ids_stop_strings_max_tokens_and_logprobs,
    "seeded_sampling": parity.test_seeded_sampling_repeats_in_the_engine,
    "prefix_multi_turn": functools.partial(prefix.test_multi_turn_sessions_equal_cache_off, "qwen3_next"),
    "prefix_shared_system": functools.partial(
        prefix.test_concurrent_sessions_sharing_a_system_prompt, "qwen3_5_moe_text"
    ),
    "prefix_eviction": prefix.test_eviction_under_pressure_keeps_outputs_exact_and_emits_events,
    "disaggregation": functools.partial(hooks.test_prefill_on_a_decode_on_b_equals_one_engine, "qwen3_next"),
    "reservation_cached_blocks": hooks.test_reservation_reuses_cached_blocks_of_the_decode_engine,
    "commit_finishes_at_once": hooks.test_commit_that_finishes_at_once_reports_it,
}


@pytest.mark.parametrize("name", sorted(ENGINE_TESTS))
def test_engine_behaviour_holds_with_overlap(overlap_everywhere: None, name: str) -> None:
    ENGINE_TESTS[name]()
