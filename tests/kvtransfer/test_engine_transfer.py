"""Prefill on engine A, move pages + state + first token with each backend into engine B's
reservation, decode on B: greedy tokens equal one engine doing both (tiny hybrid checkpoint)."""

from __future__ import annotations

import functools

import pytest
import torch

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from kvtransfer.base import TransferStatus
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

PARAMS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def tokens(length: int, seed: int) -> list[int]:
    return torch.randint(3, 1000, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_to_end(engine: LLMEngine) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    return out


def prefill_only(engine: LLMEngine, request_id: str, prompt: list[int]):
    engine.add_request(request_id, prompt, PARAMS, prefill_only=True)
    while True:
        for o in engine.step():
            if o.request_id == request_id and o.finished:
                return o.prefill


@functools.cache
def one_engine_tokens(model_dir: str, prompt: tuple[int, ...]) -> list[int]:
    alone = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, num_pages=64))
    alone.add_request("r", list(prompt), PARAMS)
    return run_to_end(alone)["r"]


def test_prefill_on_a_transfer_decode_on_b_equals_one_engine(make_backend):
    model_dir = tiny_checkpoint("qwen3_next")
    shared, prompt_tail = tokens(32, seed=11), tokens(21, seed=12)
    prompt = shared + prompt_tail
    expected = one_engine_tokens(str(model_dir), tuple(prompt))

    a = LLMEngine(model_dir, EngineConfig(num_pages=64, prefill_chunk_size=16))
    b = LLMEngine(model_dir, EngineConfig(num_pages=64))
    b.add_request("warm", shared + tokens(5, seed=13), SamplingParams(max_tokens=1))
    run_to_end(b)  # B now holds the first two blocks of the prompt in its prefix cache
    sender, receiver = make_backend(), make_backend()
    sender.register(a.cache.regions())
    receiver.register(b.cache.regions())

    result = prefill_only(a, "r", prompt)
    reservation = b.reserve("r", prompt, PARAMS)
    assert reservation.cached_blocks == 2
    dst = {"kv": reservation.page_ids, "conv": [reservation.state_slot], "ssm": [reservation.state_slot]}
    desc = receiver.expect("r", dst, deadline_s=20.0, skip_blocks=reservation.cached_blocks)
    handle = sender.open_send(desc)
    half = len(result.page_ids) // 2
    for layer in range(a.cache.kv.shape[0]):  # in two pieces, as a chunked prefill would
        handle.post("kv", layer, result.page_ids[:half])
        handle.post("kv", layer, result.page_ids[half:])
    for region in ("conv", "ssm"):
        for layer in range(a.cache.conv.shape[0]):
            handle.post(region, layer, [result.state_slot])
    handle.finish(result.first_token, {"num_tokens": result.num_tokens})
    outcome = receiver.wait("r", timeout_s=20.0)
    assert outcome.status is TransferStatus.DONE, outcome.reason
    assert outcome.extras == {"num_tokens": len(prompt)}
    receiver.forget("r")
    a.release("r")

    b.commit_reservation("r", outcome.first_token)
    assert [outcome.first_token] + run_to_end(b)["r"] == expected
