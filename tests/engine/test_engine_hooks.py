"""Disaggregation hooks without networking: prefill_only on engine A, the pages and state copied
into engine B's reservation, commit, and B's greedy tokens equal one engine alone."""

from __future__ import annotations

import pytest
import torch

from engine.cache.page_pool import OutOfPages
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import PrefillResult, Reservation
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

PARAMS = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


def tokens(length: int, seed: int) -> list[int]:
    return torch.randint(3, 1000, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_alone(model_dir, prompt: list[int]) -> list[int]:
    engine = LLMEngine(model_dir, EngineConfig(enable_prefix_cache=False, num_pages=64))
    engine.add_request("alone", prompt, PARAMS)
    out: list[int] = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.extend(o.new_token_ids)
    return out


def prefill(engine: LLMEngine, request_id: str, prompt: list[int], calls: list) -> PrefillResult:
    engine.add_request(
        request_id,
        prompt,
        PARAMS,
        prefill_only=True,
        layer_callback=lambda layer, start, end: calls.append((layer, start, end)),
    )
    while True:
        for o in engine.step():
            if o.request_id == request_id and o.finished:
                assert o.prefill is not None and o.new_token_ids == [o.prefill.first_token]
                return o.prefill


def transfer(a: LLMEngine, result: PrefillResult, b: LLMEngine, reservation: Reservation) -> None:
    """What kvtransfer does: copy the uncached pages of every attention layer and the whole state."""
    src = torch.tensor(result.page_ids[reservation.cached_blocks :])
    dst = torch.tensor(reservation.page_ids[reservation.cached_blocks :])
    b.cache.kv[:, dst] = a.cache.kv[:, src]
    b.cache.conv[:, reservation.state_slot] = a.cache.conv[:, result.state_slot]
    b.cache.ssm[:, reservation.state_slot] = a.cache.ssm[:, result.state_slot]


def decode(b: LLMEngine, request_id: str, first_token: int) -> list[int]:
    b.commit_reservation(request_id, first_token)
    out = [first_token]
    while b.has_unfinished_requests():
        for o in b.step():
            assert o.request_id == request_id
            out.extend(o.new_token_ids)
    return out


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_text"])
def test_prefill_on_a_decode_on_b_equals_one_engine(model_type: str) -> None:
    model_dir = tiny_checkpoint(model_type)
    prompt = tokens(45, seed=1)
    a = LLMEngine(model_dir, EngineConfig(num_pages=64, prefill_chunk_size=16))
    b = LLMEngine(model_dir, EngineConfig(num_pages=64))
    calls: list[tuple[int, int, int]] = []
    result = prefill(a, "req", prompt, calls)
    assert result.num_tokens == 45 and len(result.page_ids) == 3
    # Layer callbacks: every model layer after each chunk, chunks covering [0, 45) in order.
    num_layers = a.model_config.num_hidden_layers
    chunks = sorted({(s, e) for _, s, e in calls})
    assert chunks[0][0] == 0 and chunks[-1][1] == 45
    assert all(prev[1] == nxt[0] for prev, nxt in zip(chunks, chunks[1:], strict=False))
    for chunk in chunks:
        assert sorted(layer for layer, s, e in calls if (s, e) == chunk) == list(range(num_layers))
    reservation = b.reserve("req", prompt, PARAMS)
    assert reservation.cached_blocks == 0 and len(reservation.page_ids) == 3
    transfer(a, result, b, reservation)
    assert decode(b, "req", result.first_token) == run_alone(model_dir, prompt)
    # A still pins the prefill until release; then only its cached blocks hold pages.
    assert a.metrics()["num_pinned"] == 1
    assert a.release("req") and not a.release("req")
    m = a.metrics()
    assert m["pages_free"] + m["cached_pages"] == m["pages_total"] and m["slots_free"] == m["slots_total"]


def test_reservation_reuses_cached_blocks_of_the_decode_engine() -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    shared = tokens(40, seed=2)
    b = LLMEngine(model_dir, EngineConfig(num_pages=64))
    b.add_request("warm", shared + tokens(3, seed=3), PARAMS)
    while b.has_unfinished_requests():
        b.step()
    prompt = shared + tokens(10, seed=4)
    a = LLMEngine(model_dir, EngineConfig(num_pages=64))
    result = prefill(a, "req", prompt, [])
    reservation = b.reserve("req", prompt, PARAMS)
    assert reservation.cached_blocks == 2  # the two full blocks of `shared`
    transfer(a, result, b, reservation)
    assert decode(b, "req", result.first_token) == run_alone(model_dir, prompt)


def test_release_of_a_reservation_and_out_of_pages() -> None:
    engine = LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(num_pages=6, enable_prefix_cache=False))
    reservation = engine.reserve("r", tokens(50, seed=5), PARAMS)
    assert len(reservation.page_ids) == 4 and engine.metrics()["num_reserved"] == 1
    with pytest.raises(OutOfPages):
        engine.reserve("s", tokens(50, seed=6), PARAMS)
    assert engine.metrics()["pages_free"] == 2  # the failed reservation holds nothing
    with pytest.raises(KeyError):
        engine.commit_reservation("s", 5)
    assert engine.release("r")
    m = engine.metrics()
    assert m["pages_free"] == m["pages_total"] and m["slots_free"] == m["slots_total"]


def test_commit_that_finishes_at_once_reports_it() -> None:
    engine = LLMEngine(tiny_checkpoint("qwen3_next"), EngineConfig(num_pages=16, enable_prefix_cache=False))
    engine.reserve("r", tokens(20, seed=7), SamplingParams(max_tokens=1))
    engine.commit_reservation("r", 11)
    outputs = engine.step()
    assert [(o.request_id, o.finished, o.finish_reason) for o in outputs] == [("r", True, "length")]
    assert not engine.has_unfinished_requests()
