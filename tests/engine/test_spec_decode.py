"""Speculative decoding in the engine: greedy tokens equal plain decoding, token for token (both
model families, batch 1 and a mixed batch of 8 with chunked prefills, prefix cache on, across the
prefill/decode split), with every acceptance length exercised, and zero state copies."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.sampling_params import SamplingParams
from tests.engine.spec_helpers import GREEDY, drain, engine, prompt, run, use_oracle
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)


def mixed_prompts(n: int) -> dict[str, list[int]]:
    # Long ones are prefilled in several chunks while short ones already decode.
    lengths = [5, 70, 17, 40, 3, 100, 33, 9][:n]
    return {f"r{i}": prompt(length, seed=i) for i, length in enumerate(lengths)}


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text"])
def test_greedy_with_speculation_equals_without(model_type: str) -> None:
    model_dir = tiny_checkpoint(model_type)
    prompts = mixed_prompts(8)
    plain = run(engine(model_dir, prefill_chunk_size=32), prompts)
    # The real MTP head (random weights: its drafts are rejected, the bonus token carries on).
    real = engine(model_dir, k=2, prefill_chunk_size=32)
    assert run(real, prompts) == plain
    assert real.metrics()["spec_verifies"] > 0
    # Drafts right up to a varying index: acceptance lengths 0..3 mixed in every step.
    oracle = engine(model_dir, k=3, prefill_chunk_size=32)
    use_oracle(oracle, plain, prompts)
    assert run(oracle, prompts) == plain
    m = oracle.metrics()
    assert m["spec_accepted"] > 0 and 1.5 < m["spec_mean_acceptance_length"] < 4
    assert m["spec_state_copies"] == 0
    assert m["pages_free"] + m["cached_pages"] == m["pages_total"] and m["slots_free"] == m["slots_total"]


def test_batch_of_one_and_state_copies_are_zero() -> None:
    model_dir = tiny_checkpoint("qwen3_5_text")
    prompts = {"solo": prompt(37, seed=11)}
    plain = run(engine(model_dir, enable_prefix_cache=False), prompts)
    spec = engine(model_dir, k=4, enable_prefix_cache=False)
    use_oracle(spec, plain, prompts)
    assert run(spec, prompts) == plain
    # Without a prefix cache nothing copies states at all: acceptance swapped slot ids only.
    assert spec.cache.state_copies == 0 and spec.metrics()["spec_state_copies"] == 0
    assert spec.metrics()["steps"] < engine_steps(model_dir, prompts)


def engine_steps(model_dir, prompts) -> int:
    plain = engine(model_dir, enable_prefix_cache=False)
    run(plain, prompts)
    return plain.metrics()["steps"]


def test_prefix_cache_turns_with_speculation() -> None:
    """A second turn continues from the first turn's cached blocks and decode snapshots, which the
    speculating engine took at block ends passed inside a verify."""
    model_dir = tiny_checkpoint("qwen3_next")
    first = {"t1": prompt(30, seed=21)}
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    plain_engine = engine(model_dir)
    plain = run(plain_engine, first, params)
    spec = engine(model_dir, k=3)
    use_oracle(spec, plain, first)
    assert run(spec, first, params) == plain
    second = {"t2": first["t1"] + plain["t1"] + prompt(5, seed=22)}
    plain2 = run(plain_engine, second, params)
    use_oracle(spec, plain2, second)
    assert run(spec, second, params) == plain2
    assert spec.metrics()["cached_tokens"] == plain_engine.metrics()["cached_tokens"] > 0
    assert spec.metrics()["spec_state_copies"] == 0


def test_prefill_on_a_speculative_decode_on_b() -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    prompts = {"req": prompt(45, seed=31)}
    plain = run(engine(model_dir, enable_prefix_cache=False), prompts)
    a = engine(model_dir, prefill_chunk_size=16)
    a.add_request("req", prompts["req"], GREEDY, prefill_only=True)
    result = None
    while result is None:
        result = next((o.prefill for o in a.step() if o.finished), None)
    b = engine(model_dir, k=3)
    use_oracle(b, plain, prompts)
    reservation = b.reserve("req", prompts["req"], GREEDY)
    src, dst = torch.tensor(result.page_ids), torch.tensor(reservation.page_ids)
    b.cache.kv[:, dst] = a.cache.kv[:, src]
    b.cache.conv[:, reservation.state_slot] = a.cache.conv[:, result.state_slot]
    b.cache.ssm[:, reservation.state_slot] = a.cache.ssm[:, result.state_slot]
    b.commit_reservation("req", result.first_token)
    out = drain(b, {"req": [result.first_token]})
    assert out == plain
    assert b.metrics()["spec_accepted"] > 0 and b.metrics()["spec_state_copies"] == 0
    assert a.release("req")


def test_qwen3_next_config_without_mtp_key_still_speculates(tmp_path) -> None:
    """The released Qwen3-Next config has no `mtp_num_hidden_layers`; its `mtp.*` tensors are the head."""
    model_dir = tmp_path / "next"
    shutil.copytree(tiny_checkpoint("qwen3_next"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    del config["mtp_num_hidden_layers"]
    (model_dir / "config.json").write_text(json.dumps(config))
    prompts = {"a": prompt(21, seed=3)}
    plain = run(engine(model_dir), prompts)
    spec = engine(model_dir, k=2)
    assert run(spec, prompts) == plain
    assert spec.metrics()["spec_verifies"] > 0
