"""Decode as CUDA-graph replays (engine/cuda_graphs.py).

On the CPU: the static-buffer decode forward the graphs capture (padded to a bucket, padding rows
on a scratch page and slot, block tables as wide as the planned bound) gives the same logits,
KV and states as the eager forward, for both model families. On a GPU (marked `cuda`): greedy
tokens with graphs == eager == CPU == transformers, with prefix-cache turns and a mixed batch, and
one graph replay per decode step."""

from __future__ import annotations

import pytest
import torch

from engine.cuda_graphs import DecodeGraphs, batch_buckets
from engine.engine_config import EngineConfig
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.model_runner import SeqChunk
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint
from tests.helpers.graphs import attach_capture_free_graphs

pytestmark = pytest.mark.timeout(300)

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a cuda device")


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(3, 900, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_buckets_cover_every_batch_size() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    for n in range(1, 21):
        assert min(b for b in batch_buckets(20) if b >= n) - n < 8


def decoding_engine(model_type: str, lengths: tuple[int, ...]) -> LLMEngine:
    engine = LLMEngine(
        tiny_checkpoint(model_type), EngineConfig(enable_prefix_cache=False, num_pages=48, max_model_len=256)
    )
    for i, length in enumerate(lengths):
        engine.add_request(f"r{i}", prompt(length, seed=i), GREEDY)
    while any(s.num_computed_tokens < s.num_tokens - 1 for s in engine.sequences.values()):
        engine.step()
    return engine


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_text"])
def test_static_buffer_decode_equals_eager_decode(model_type: str) -> None:
    engine = decoding_engine(model_type, (5, 21, 40))
    cache = engine.cache
    scratch_page = engine.memory.pages.allocate(1)[0]  # owned by no sequence
    scratch_slot = engine.memory.live_slots.allocate()
    graphs = DecodeGraphs(
        engine.model,
        cache,
        max_batch=8,
        max_model_len=256,
        scratch_page=scratch_page,
        scratch_slot=scratch_slot,
        capture=False,
    )
    seqs = list(engine.sequences.values())
    chunks = [
        SeqChunk([s.all_token_ids[-1]], s.num_tokens - 1, list(s.block_table), s.state_slot) for s in seqs
    ]
    assert graphs.can_run(chunks) and graphs.bucket_for(len(chunks)) == 4  # one padding row
    before = {name: t.clone() for name, t in cache.regions().items()}
    eager = engine.runner.forward(chunks)
    after_eager = {name: t.clone() for name, t in cache.regions().items()}
    for name, t in cache.regions().items():
        t.copy_(before[name])
    static = graphs.run(chunks)
    torch.testing.assert_close(static, eager, atol=1e-5, rtol=1e-5)
    slots = torch.tensor([s.state_slot for s in seqs])
    for name in ("conv", "ssm"):
        torch.testing.assert_close(cache.regions()[name][:, slots], after_eager[name][:, slots])
    owned = torch.tensor(sorted({p for s in seqs for p in s.block_table}))
    torch.testing.assert_close(cache.kv[:, owned], after_eager["kv"][:, owned])
    # a second step through the same buffers (stale table entries of the first step are harmless)
    chunks = [SeqChunk([7], c.start_pos + 1, c.block_table, c.state_slot) for c in chunks[:2]]
    for c in chunks:  # make sure the next position has a page
        assert len(c.block_table) * cache.block_size > c.start_pos
    snapshot = {name: t.clone() for name, t in cache.regions().items()}
    eager = engine.runner.forward(chunks)
    for name, t in cache.regions().items():
        t.copy_(snapshot[name])
    torch.testing.assert_close(graphs.run(chunks), eager, atol=1e-5, rtol=1e-5)
    assert graphs.replays == 2


def eager_then_static(cache, eager, static):
    """Run `eager()` and `static()` from the same cache contents; (outputs, caches after each)."""
    before = {name: t.clone() for name, t in cache.regions().items()}
    out_eager = eager()
    after_eager = {name: t.clone() for name, t in cache.regions().items()}
    for name, t in cache.regions().items():
        t.copy_(before[name])
    out_static = static()
    return out_eager, out_static, after_eager, cache.regions()


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_static_buffer_verify_equals_eager_verify(model_type: str) -> None:
    engine = decoding_engine(model_type, (6, 30, 17))
    scratch_page = engine.memory.pages.allocate(1)[0]
    scratch_slot = engine.memory.live_slots.allocate()
    graphs = DecodeGraphs(
        engine.model,
        engine.cache,
        max_batch=4,
        max_model_len=256,
        scratch_page=scratch_page,
        scratch_slot=scratch_slot,
        verify_steps=3,
        capture=False,
    )
    chunks = []
    for seq in engine.sequences.values():  # the last token + 2 drafts, a state slot per token
        assert engine.memory.ensure_pages(seq, seq.num_tokens + 2)
        spares = [engine.memory.live_slots.allocate() for _ in range(2)]
        drafts = prompt(2, seed=seq.num_tokens)
        start = seq.num_tokens - 1
        chunks.append(
            SeqChunk([seq.all_token_ids[-1], *drafts], start, list(seq.block_table), seq.state_slot)
        )
        chunks[-1].step_slots = [seq.state_slot, *spares]
    assert graphs.steps_of(chunks) == 3 and graphs.bucket_for(3) == 4
    (eager, eager_rows), static, after_eager, after_static = eager_then_static(
        engine.cache, lambda: engine.runner.forward_hidden(chunks), lambda: graphs.run(chunks)
    )
    assert eager_rows == [(0, 3), (3, 6), (6, 9)]
    torch.testing.assert_close(static, eager, atol=1e-5, rtol=1e-5)
    slots = torch.tensor([s for c in chunks for s in c.step_slots])
    pages = torch.tensor(sorted({p for c in chunks for p in c.block_table}))
    for name, index in (("conv", slots), ("ssm", slots), ("kv", pages)):
        torch.testing.assert_close(after_static[name][:, index], after_eager[name][:, index])


def run_to_end(engine: LLMEngine, prompts: list[list[int]]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, GREEDY)
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens


@pytest.mark.parametrize("num_speculative_tokens", [0, 2])
def test_engine_routes_decode_and_verify_steps_through_the_graph_runner(num_speculative_tokens: int) -> None:
    """The engine's steps on the CPU with a capture-free DecodeGraphs attached, as on a GPU: the
    same tokens as the plain engine, and every pure decode / verify step goes through it."""
    model_dir = tiny_checkpoint("qwen3_next")
    config = EngineConfig(num_pages=64, max_num_seqs=4, num_speculative_tokens=num_speculative_tokens)
    prompts = [prompt(n, seed=20 + n) for n in (5, 23, 40)]
    expected = run_to_end(LLMEngine(model_dir, config), prompts)
    engine = LLMEngine(model_dir, config)
    graphs, kinds = attach_capture_free_graphs(engine)
    assert run_to_end(engine, prompts) == expected
    assert len(kinds) == graphs.replays >= 8
    if num_speculative_tokens:
        assert kinds.count(num_speculative_tokens + 1) > 0  # verify steps replayed


def test_steps_that_are_not_pure_decode_run_eagerly() -> None:
    engine = decoding_engine("qwen3_5_text", (9,))
    seq = next(iter(engine.sequences.values()))
    graphs = DecodeGraphs(
        engine.model,
        engine.cache,
        max_batch=2,
        max_model_len=256,
        scratch_page=0,
        scratch_slot=0,
        capture=False,
    )
    decode = SeqChunk([1], seq.num_tokens - 1, list(seq.block_table), seq.state_slot)
    prefill = SeqChunk([1, 2], 0, [1], 1)
    verify = SeqChunk(
        [1, 2], seq.num_tokens - 1, list(seq.block_table), seq.state_slot, step_slots=[seq.state_slot, 3]
    )
    assert graphs.can_run([decode])
    assert not graphs.can_run([decode, prefill]) and not graphs.can_run([verify])
    assert not graphs.can_run([decode] * 3)  # more than the largest bucket
    assert graphs.steps_of([verify]) is None  # no verify graphs without speculation


# ---- on a GPU ------------------------------------------------------------------------------------
def generate(model_type: str, prompts: list[list[int]], **options) -> tuple[list[list[int]], LLM]:
    # prefill chunks of 16 tokens: the long prompt prefills while the short ones decode (mixed steps)
    llm = LLM(tiny_checkpoint(model_type), prefill_chunk_size=16, **options)
    results = llm.generate(prompts, GREEDY)
    return [r.token_ids for r in results], llm


def transformers_greedy(model_type: str, ids: list[int]) -> list[int]:
    from transformers import AutoModelForCausalLM  # test-only reference, loaded only on a GPU run

    model_dir = tiny_checkpoint(model_type)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n = GREEDY.max_tokens
    with torch.inference_mode():
        out = reference.generate(
            torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return out[0, len(ids) :].tolist()


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
@pytest.mark.parametrize("prefix_cache", [False, True])
def test_cuda_graph_tokens_equal_eager_and_cpu(model_type: str, prefix_cache: bool) -> None:
    system = prompt(40, seed=99)
    first = [system + prompt(7, seed=1), prompt(33, seed=2), prompt(3, seed=3)]  # a mixed batch
    cpu, _ = generate(model_type, first, enable_prefix_cache=prefix_cache)
    eager, _ = generate(
        model_type, first, device="cuda", enforce_eager=True, enable_prefix_cache=prefix_cache
    )
    graphed, llm = generate(model_type, first, device="cuda", enable_prefix_cache=prefix_cache)
    assert graphed == eager == cpu == [transformers_greedy(model_type, ids) for ids in first]
    metrics = llm.engine.metrics()
    assert metrics["cuda_graphs"] > 0 and metrics["cuda_graph_replays"] > 0
    assert metrics["cuda_graph_bytes"] >= 0
    # the next turn of the first session: served from the prefix cache when it is on
    turn = [first[0] + graphed[0] + prompt(9, seed=4)]
    again = llm.generate(turn, GREEDY)[0].token_ids
    assert again == generate(model_type, turn, enable_prefix_cache=False)[0][0]


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_text"])
def test_cuda_one_graph_replay_per_decode_step(model_type: str) -> None:
    engine = LLMEngine(tiny_checkpoint(model_type), EngineConfig(device="cuda", num_pages=64))
    for i in range(3):
        engine.add_request(f"r{i}", prompt(8 + i, seed=i), GREEDY)
    engine.step()  # the prefill step (eager)
    replays = engine.metrics()["cuda_graph_replays"]
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    assert engine.metrics()["cuda_graph_replays"] - replays == steps


@pytest.mark.cuda
@no_cuda
def test_cuda_speculative_verify_runs_as_graph_replays() -> None:
    prompts = [prompt(20, seed=5), prompt(9, seed=6)]
    cpu, _ = generate("qwen3_next", prompts, enable_prefix_cache=False)
    spec, llm = generate("qwen3_next", prompts, device="cuda", num_speculative_tokens=2)
    assert spec == cpu  # greedy speculation changes no token
    graphs = llm.engine.runner.graphs
    assert any(steps == 3 for _, steps in graphs.graphs) and graphs.replays > 0
