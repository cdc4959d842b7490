"""Scheduler + BlockManager with real pools, stepping sequences by hand (no model): budgets,
chunking, admission order, preemption by recompute and that every page/slot comes back."""

from __future__ import annotations

import pytest

from engine.block_manager import BlockManager
from engine.cache.page_pool import PagePool
from engine.cache.state_pool import StatePool
from engine.cache.tensors import CacheTensors
from engine.engine_config import EngineConfig
from engine.model_config import ModelConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence, Status
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(60)


def make(num_pages: int, slots: int = 4, **options) -> Scheduler:
    model_config = ModelConfig.from_json(tiny_checkpoint("qwen3_next"))
    config = EngineConfig(
        num_pages=num_pages, num_slots=slots, max_num_seqs=slots, enable_prefix_cache=False, **options
    )
    cache = CacheTensors.allocate(model_config, num_pages, slots, config.block_size)
    return Scheduler(config, BlockManager(cache, PagePool(num_pages), StatePool(range(slots))))


def seq(i: int, prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(f"r{i}", list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens), arrival=i)


def run_step(scheduler: Scheduler) -> list[tuple[str, int, int]]:
    """Schedules, 'computes' and samples token 7 where a chunk reaches the end; finishes at max_tokens."""
    chunks = scheduler.schedule()
    for c in chunks:
        assert c.start == c.seq.num_computed_tokens and c.end > c.start
        assert len(c.seq.block_table) * scheduler.config.block_size >= c.end
        c.seq.num_computed_tokens = c.end
        if c.samples:
            c.seq.output_token_ids.append(7)
            if len(c.seq.output_token_ids) >= c.seq.params.max_tokens:
                scheduler.remove(c.seq)
                scheduler.memory.free(c.seq)
                c.seq.status = Status.FINISHED
    return [(c.seq.request_id, c.start, c.end) for c in chunks]


def assert_everything_back(scheduler: Scheduler) -> None:
    memory = scheduler.memory
    assert memory.pages.num_free == memory.pages.num_total
    assert memory.live_slots.num_free == memory.live_slots.num_total


def test_chunked_prefill_mixes_with_decode_under_the_budget() -> None:
    scheduler = make(num_pages=64, max_num_batched_tokens=40, prefill_chunk_size=32)
    scheduler.add(seq(1, 10, max_tokens=4))
    assert run_step(scheduler) == [("r1", 0, 10)]
    scheduler.add(seq(2, 100))
    assert run_step(scheduler) == [("r1", 10, 11), ("r2", 0, 32)]  # decode first, then a chunk
    assert run_step(scheduler) == [("r1", 11, 12), ("r2", 32, 64)]
    assert run_step(scheduler) == [("r1", 12, 13), ("r2", 64, 96)]  # r1 finishes (4 tokens)
    assert run_step(scheduler) == [("r2", 96, 100)]
    assert run_step(scheduler) == [("r2", 100, 101)]


def test_fcfs_and_max_num_seqs() -> None:
    scheduler = make(num_pages=64, slots=2)
    for i in range(3):
        scheduler.add(seq(i, 5, max_tokens=2))
    assert [r for r, _, _ in run_step(scheduler)] == ["r0", "r1"]
    assert [r for r, _, _ in run_step(scheduler)] == ["r0", "r1"]  # both finish
    assert [r for r, _, _ in run_step(scheduler)] == ["r2"]


def test_preemption_recomputes_and_returns_every_page() -> None:
    scheduler = make(num_pages=6, slots=3, block_size=4)
    seqs = [seq(i, 7, max_tokens=12) for i in range(3)]
    for s in seqs:
        scheduler.add(s)
    preempted_once = False
    for _ in range(200):
        if not scheduler.has_work():
            break
        run_step(scheduler)
        preempted_once |= scheduler.num_preemptions > 0
        held = sum(len(s.block_table) for s in seqs)
        assert held == scheduler.memory.pages.num_used  # no page leaks or double counts
    assert preempted_once
    assert all(s.status is Status.FINISHED and len(s.output_token_ids) == 12 for s in seqs)
    assert_everything_back(scheduler)


def test_preempted_sequence_recomputes_prompt_and_output() -> None:
    scheduler = make(num_pages=5, slots=2, block_size=4)
    first, second = seq(1, 8, max_tokens=10), seq(2, 8, max_tokens=10)
    scheduler.add(first)
    scheduler.add(second)
    while scheduler.num_preemptions == 0:
        run_step(scheduler)
    assert second.status is Status.WAITING and second.num_computed_tokens == 0 and not second.block_table
    generated = len(second.output_token_ids)
    while first.status is not Status.FINISHED:
        run_step(scheduler)
    steps = run_step(scheduler)
    assert steps[0] == ("r2", 0, 8 + generated)  # prompt + output recomputed in one chunk
    while scheduler.has_work():
        run_step(scheduler)
    assert_everything_back(scheduler)


def test_abort_frees_everything() -> None:
    scheduler = make(num_pages=32)
    seqs = [seq(i, 20 + i) for i in range(3)]
    for s in seqs:
        scheduler.add(s)
    run_step(scheduler)
    for s in seqs:
        scheduler.remove(s)
        scheduler.memory.free(s)
    assert not scheduler.has_work()
    assert_everything_back(scheduler)
