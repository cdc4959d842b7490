"""Prefix cache on vs off: the same greedy tokens and logits over multi-turn sessions and over
concurrent sessions sharing a system prompt, on the tiny checkpoints of each model type, with block
sizes that differ from the prefill chunk size; evictions under pressure, events, pools at the end."""

from __future__ import annotations

import pytest
import torch

from engine.cache.events import KvEvent
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

MODEL_TYPES = ["qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"]
PARAMS = SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True)


def tokens(length: int, seed: int) -> list[int]:
    return torch.randint(3, 1000, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


class Recorder:
    """Runs requests on an engine, recording per request its tokens and the logits it sampled from."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.logits: dict[str, list[torch.Tensor]] = {}
        self.tokens: dict[str, list[int]] = {}
        self.cached: dict[str, int] = {}
        engine.logits_observer = lambda rid, row: self.logits.setdefault(rid, []).append(row.clone())

    def add(self, request_id: str, prompt: list[int]) -> None:
        self.tokens[request_id] = []
        self.engine.add_request(request_id, prompt, PARAMS)

    def step(self) -> None:
        for out in self.engine.step():
            self.tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                self.cached[out.request_id] = out.num_cached_tokens

    def drain(self) -> None:
        while self.engine.has_unfinished_requests():
            self.step()


def engines(model_type: str, **options) -> tuple[Recorder, Recorder]:
    model_dir = tiny_checkpoint(model_type)
    base = dict(block_size=16, prefill_chunk_size=24, num_pages=256, checkpoint_every_blocks=2) | options
    on = Recorder(LLMEngine(model_dir, EngineConfig(enable_prefix_cache=True, **base)))
    off = Recorder(LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, **base)))
    return on, off


def assert_same(on: Recorder, off: Recorder) -> None:
    assert on.tokens == off.tokens
    for rid, rows in off.logits.items():
        torch.testing.assert_close(torch.stack(on.logits[rid]), torch.stack(rows), atol=1e-4, rtol=0)


def assert_pools_back(engine: LLMEngine) -> None:
    m = engine.metrics()
    assert m["pages_free"] + m["cached_pages"] == m["pages_total"]
    assert m["slots_free"] == m["slots_total"]
    assert m["checkpoints"] + m["checkpoint_slots_free"] == m["checkpoint_slots_total"]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_multi_turn_sessions_equal_cache_off(model_type: str) -> None:
    on, off = engines(model_type)
    prompts = {0: tokens(53, seed=1), 1: tokens(70, seed=2)}
    for turn in range(3):
        for recorder in (on, off):
            for session, prompt in prompts.items():
                recorder.add(f"s{session}-t{turn}", prompt)
            recorder.drain()
        for session in prompts:
            rid = f"s{session}-t{turn}"
            prompts[session] = (
                prompts[session] + off.tokens[rid] + tokens(21 + turn, seed=100 * turn + session)
            )
    assert_same(on, off)
    # Later turns reuse everything up to the previous turn's last block end.
    for session in (0, 1):
        for turn in (1, 2):
            assert on.cached[f"s{session}-t{turn}"] >= 48
    metrics = on.engine.metrics()
    assert metrics["hit_rate"] > 0.5 and metrics["checkpoints"] > 0
    assert_pools_back(on.engine)


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_concurrent_sessions_sharing_a_system_prompt(model_type: str) -> None:
    on, off = engines(model_type, prefill_chunk_size=20, checkpoint_every_blocks=1)
    system = tokens(70, seed=7)
    for recorder in (on, off):
        recorder.add("first", system + tokens(9, seed=8))
        for _ in range(5):  # the first session's prefill has passed the system prompt
            recorder.step()
        for i in range(4):
            recorder.add(f"s{i}", system + tokens(5 + 7 * i, seed=20 + i))
        recorder.drain()
    assert_same(on, off)
    assert all(on.cached[f"s{i}"] >= 64 for i in range(4))
    assert_pools_back(on.engine)


def test_eviction_under_pressure_keeps_outputs_exact_and_emits_events() -> None:
    events: list[KvEvent] = []
    model_dir = tiny_checkpoint("qwen3_next")
    options = dict(
        block_size=16, prefill_chunk_size=32, num_pages=24, checkpoint_every_blocks=2, checkpoint_slots=6
    )
    on = Recorder(
        LLMEngine(model_dir, EngineConfig(enable_prefix_cache=True, **options), on_kv_event=events.append)
    )
    off = Recorder(LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, **options)))
    for round_ in range(3):
        for recorder in (on, off):
            for i in range(4):
                recorder.add(f"r{round_}-{i}", tokens(60, seed=i) + tokens(5, seed=50 + round_))
            recorder.drain()
    assert_same(on, off)
    metrics = on.engine.metrics()
    assert metrics["evictions"] > 0
    stored = [e for e in events if e.kind == "stored"]
    removed = [e for e in events if e.kind == "removed"]
    assert stored and removed and any(e.checkpoint_hashes for e in stored)
    assert_pools_back(on.engine)


def test_cache_salt_separates_tenants() -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    engine = LLMEngine(model_dir, EngineConfig(num_pages=64, block_size=16))
    prompt = tokens(40, seed=3)
    outputs = {}
    for rid, salt in (("a", "tenant-1"), ("b", "tenant-2"), ("c", "tenant-1")):
        engine.add_request(rid, prompt, SamplingParams(max_tokens=1), cache_salt=salt)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    outputs[rid] = out
    assert outputs["a"].num_cached_tokens == 0
    assert outputs["b"].num_cached_tokens == 0  # another tenant: no hit
    assert outputs["c"].num_cached_tokens == 32


def test_checkpoint_at_the_branch_point_serves_the_next_session() -> None:
    on, off = engines("qwen3_next", checkpoint_every_blocks=4)
    system = tokens(100, seed=9)  # blocks 0-5 shared, checkpoints every 64 tokens
    for recorder in (on, off):
        for i in range(3):
            recorder.add(f"s{i}", system + tokens(9 + i, seed=30 + i))
            recorder.drain()
    assert_same(on, off)
    assert on.cached["s1"] == 64  # only the every-K checkpoint lies inside the shared part ...
    assert on.cached["s2"] == 96  # ... but s1 left one where it branched off: s2 reuses all 6 blocks
    assert_pools_back(on.engine)
