"""The engine end to end on the tiny checkpoints: greedy tokens equal transformers' generate;
chunked prefill equals one-shot; a batch equals each request alone; preemption, abort and finish
give every page and slot back; stop ids/strings, max_tokens and logprobs behave."""

from __future__ import annotations

import pytest
import torch

from engine.engine_config import EngineConfig
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

MODEL_TYPES = ["qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)


def prompt(length: int, seed: int, vocab: int = 1000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (length,), generator=g).tolist()


def assert_pools_full(engine: LLMEngine) -> None:
    m = engine.metrics()
    held = m["cached_pages"] if engine.prefix_cache is not None else 0
    assert m["pages_free"] + held == m["pages_total"]
    assert m["slots_free"] == m["slots_total"]
    assert not engine.sequences


def run_with_logits(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams):
    logits: dict[str, list[torch.Tensor]] = {}
    engine.logits_observer = lambda rid, row: logits.setdefault(rid, []).append(row.clone())
    tokens: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
        tokens[f"r{i}"] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
    return [tokens[f"r{i}"] for i in range(len(prompts))], [
        torch.stack(logits[f"r{i}"]) for i in range(len(prompts))
    ]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_greedy_64_tokens_equal_transformers_generate(model_type: str) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny_checkpoint(model_type)
    ids = prompt(23, seed=1)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = reference.generate(
            torch.tensor([ids]), max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0
        )[0, len(ids) :].tolist()
    result = LLM(model_dir, enable_prefix_cache=False).generate([ids], GREEDY)[0]
    assert result.token_ids == expected


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_chunked_prefill_equals_one_shot(model_type: str) -> None:
    model_dir = tiny_checkpoint(model_type)
    prompts = [prompt(100, seed=2), prompt(37, seed=3)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    one_shot = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, num_pages=64))
    chunked = LLMEngine(
        model_dir, EngineConfig(enable_prefix_cache=False, num_pages=64, prefill_chunk_size=32)
    )
    tokens_a, logits_a = run_with_logits(one_shot, prompts, params)
    tokens_b, logits_b = run_with_logits(chunked, prompts, params)
    assert tokens_a == tokens_b
    for a, b in zip(logits_a, logits_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_batch_equals_each_request_alone_and_preemption_recomputes_exactly() -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    prompts = [prompt(n, seed=10 + n) for n in (5, 40, 17, 64)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    single = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, num_pages=16))
    alone = [run_with_logits(single, [p], params)[0][0] for p in prompts]
    batched = LLMEngine(
        model_dir, EngineConfig(enable_prefix_cache=False, num_pages=64, prefill_chunk_size=16)
    )
    assert run_with_logits(batched, prompts, params)[0] == alone
    assert_pools_full(batched)
    # 14 pages of 16 tokens cannot hold four sequences of up to 88 tokens: preemption must happen.
    tight = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, num_pages=14))
    assert run_with_logits(tight, prompts, params)[0] == alone
    assert tight.metrics()["num_preemptions"] > 0
    assert_pools_full(tight)


def test_abort_at_any_time_frees_everything() -> None:
    engine = LLMEngine(
        tiny_checkpoint("qwen3_next"),
        EngineConfig(enable_prefix_cache=False, num_pages=32, prefill_chunk_size=16),
    )
    params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"r{i}", prompt(40, seed=i), params)
    engine.step()  # r0 prefilling, others waiting or partly prefilled
    assert engine.abort("r1") and engine.abort("r3")
    engine.step()
    engine.step()
    assert engine.abort("r0")
    assert not engine.abort("nope")
    outputs = []
    while engine.has_unfinished_requests():
        outputs.extend(engine.step())
    aborted = {o.request_id for o in outputs if o.finish_reason == "abort"}
    assert aborted == {"r0"} and any(o.request_id == "r2" and o.finish_reason == "length" for o in outputs)
    assert_pools_full(engine)


def test_stop_ids_stop_strings_max_tokens_and_logprobs() -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    llm = LLM(model_dir, enable_prefix_cache=False)
    ids = prompt(12, seed=5)
    free = llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))[0]
    assert len(free.token_ids) == 30 and free.finish_reason == "length"
    stop_token = free.token_ids[9]
    first = free.token_ids.index(stop_token)
    stopped = llm.generate(
        [ids], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop_token_ids=[stop_token])
    )[0]
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"
    assert stopped.stop_reason == stop_token
    text = llm.tokenizer.decode(free.token_ids)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop and stop in text
    cut = llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]
    assert free.token_ids[: len(cut.token_ids)] == cut.token_ids
    with_lp = llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2))[
        0
    ]
    assert [lp.token_id for lp in with_lp.logprobs] == free.token_ids[:5]
    assert all(lp.logprob <= 0 and len(lp.top_token_ids) == 2 for lp in with_lp.logprobs)
    assert all(lp.top_token_ids[0] == lp.token_id for lp in with_lp.logprobs)  # greedy = top-1


def test_seeded_sampling_repeats_in_the_engine() -> None:
    llm = LLM(tiny_checkpoint("qwen3_next"), enable_prefix_cache=False)
    ids = prompt(9, seed=6)
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=20, ignore_eos=True)
    alone = llm.generate([ids], params)[0].token_ids
    others = SamplingParams(temperature=1.2, max_tokens=20, ignore_eos=True)
    mixed = llm.generate([prompt(30, seed=7), ids, prompt(4, seed=8)], [others, params, others])[1].token_ids
    assert alone == mixed


def test_bad_requests_raise_value_error() -> None:
    engine = LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(enable_prefix_cache=False, num_pages=8))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("a", [], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request("b", [1, 10**9], SamplingParams())
    with pytest.raises(ValueError, match="temperature"):
        engine.add_request("c", [1, 2], SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="KV cache"):
        engine.add_request("d", [1] * 200, SamplingParams())
    engine.add_request("e", [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="already"):
        engine.add_request("e", [1, 2], SamplingParams())
