"""The router's claim on what a finished request left in its decode worker's cache: it answers a
lookup exactly as the index would once the worker's `stored` event arrives (the embedded index fed
that event is the reference), stays within its tenant's session, its worker's epoch and its ttl,
retires when the index catches up (then a removal wins), and is bounded by count and bytes."""

from __future__ import annotations

import random

import pytest

from engine.cache.hashing import block_hashes, cache_extra
from prefix_index.base import IndexEvent, PrefixHit
from prefix_index.embedded import EmbeddedPrefixIndex
from router.finished_prefixes import FinishedPrefixes, end_of_turn_checkpoint
from router.policy import RoutingConfig, RoutingPolicy, WorkerCandidate

BS = 16
MODEL = "xxh3:model"
EXTRA = cache_extra(MODEL, "tenant-a")
SESSION = "tenant-a\x1fs1"
EPOCHS = {"decode-1": 7, "decode-2": 3}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 1000) for _ in range(n)]


def _finished(seed: int = 0, prompt: int = 40, output: int = 40):
    """A finished turn: its whole sequence and the hashes of the blocks the decode worker computed."""
    sequence = _tokens(seed, prompt + output)
    computed = len(sequence) - 1  # the last sampled token was never fed back
    return sequence, block_hashes(sequence[:computed], BS, extra=EXTRA)


def _reference_hit(hashes, checkpoint_blocks, prompt_hashes):
    """What the index answers once the worker's `stored` event for the finish has arrived."""
    index = EmbeddedPrefixIndex()
    index.heartbeat("decode-1", EPOCHS["decode-1"], ttl_s=60)
    checkpoints = (hashes[checkpoint_blocks - 1],) if checkpoint_blocks else ()
    index.publish("decode-1", EPOCHS["decode-1"], MODEL, [IndexEvent("stored", tuple(hashes), checkpoints)])
    return index.lookup(MODEL, prompt_hashes).get("decode-1")


@pytest.mark.parametrize("new_tokens, diverge_at", [(30, None), (0, None), (20, 50), (20, 3)])
def test_the_claim_answers_like_the_index_after_the_stored_event(new_tokens, diverge_at):
    sequence, hashes = _finished()
    next_prompt = sequence + _tokens(1, new_tokens)
    if diverge_at is not None:
        next_prompt[diverge_at] += 1  # e.g. a template that renders the answer differently
    prompt_hashes = block_hashes(next_prompt, BS, extra=EXTRA)
    claims = FinishedPrefixes()
    claims.record(SESSION, "decode-1", EPOCHS["decode-1"], hashes, checkpoint_blocks=len(hashes))

    merged = claims.merge(SESSION, prompt_hashes, {}, EPOCHS)

    assert merged.get("decode-1") == _reference_hit(hashes, len(hashes), prompt_hashes)


def test_next_turn_routes_locally_with_the_claim_and_disaggregates_without_it():
    """The flaky demo's turn 2: 95 tokens, nothing in the index yet, threshold 64."""
    sequence, hashes = _finished(prompt=39, output=40)
    prompt = sequence + _tokens(2, 16)
    prompt_hashes = block_hashes(prompt, BS, extra=EXTRA)
    checkpoint = end_of_turn_checkpoint(39, len(sequence) - 1, BS, local_prefill=True)
    claims = FinishedPrefixes()
    claims.record(SESSION, "decode-1", EPOCHS["decode-1"], hashes, checkpoint)
    policy = RoutingPolicy(RoutingConfig(block_size=BS, local_prefill_threshold=64))
    workers = {
        "prefill_workers": [WorkerCandidate("prefill-0")],
        "decode_workers": [WorkerCandidate("decode-1")],
        "affinity_decode": "decode-1",
    }

    without = policy.route(prompt_tokens=len(prompt), hits={}, **workers)
    hits = claims.merge(SESSION, prompt_hashes, {}, {"decode-1": EPOCHS["decode-1"]})
    with_claim = policy.route(prompt_tokens=len(prompt), hits=hits, **workers)

    assert without.prefill_worker == "prefill-0" and without.cached_tokens == 0
    assert with_claim.prefill_worker is None and with_claim.cached_tokens == 64
    assert with_claim.verify_with == "prefill-0", "a claim is checked against the worker's reservation"


def test_no_claim_crosses_tenants_or_sessions():
    sequence, hashes = _finished()
    claims = FinishedPrefixes()
    claims.record(SESSION, "decode-1", EPOCHS["decode-1"], hashes, len(hashes))
    own = block_hashes(sequence, BS, extra=EXTRA)
    other_tenant = block_hashes(sequence, BS, extra=cache_extra(MODEL, "tenant-b"))

    assert claims.merge("tenant-b\x1fs1", own, {}, EPOCHS) == {}, "same session id, another tenant"
    assert claims.merge("tenant-a\x1fs2", own, {}, EPOCHS) == {}, "another session"
    assert claims.merge(SESSION, other_tenant, {}, EPOCHS) == {}, "hashes salted for another tenant"
    assert claims.merge("", own, {}, EPOCHS) == {}, "no session, no claim"
    assert "decode-1" in claims.merge(SESSION, own, {}, EPOCHS)


def test_a_restart_the_ttl_or_an_unroutable_worker_voids_the_claim():
    sequence, hashes = _finished()
    prompt_hashes = block_hashes(sequence, BS, extra=EXTRA)
    clock = Clock()
    claims = FinishedPrefixes(ttl_s=5.0, clock=clock)
    claims.record(SESSION, "decode-1", EPOCHS["decode-1"], hashes, len(hashes))

    assert claims.merge(SESSION, prompt_hashes, {}, {"decode-2": 3}) == {}, "not routable now"
    assert len(claims) == 1, "kept: the worker may come back within the ttl"
    assert claims.merge(SESSION, prompt_hashes, {}, {"decode-1": 8}) == {}, "restarted: a new epoch"
    assert len(claims) == 0

    claims.record(SESSION, "decode-1", EPOCHS["decode-1"], hashes, len(hashes))
    clock.now += 5.0
    assert claims.merge(SESSION, prompt_hashes, {}, EPOCHS) == {}
    assert len(claims) == 0 and claims.bytes == 0


def test_the_claim_retires_when_the_index_catches_up_so_a_removal_wins():
    sequence, hashes = _finished()
    prompt_hashes = block_hashes(sequence + _tokens(3, 20), BS, extra=EXTRA)
    claims = FinishedPrefixes()
    claims.record(SESSION, "decode-1", EPOCHS["decode-1"], hashes, len(hashes))
    caught_up = {"decode-1": PrefixHit("decode-1", len(hashes), len(hashes))}
    partial = {"decode-1": PrefixHit("decode-1", 2, 2), "prefill-0": PrefixHit("prefill-0", 1, 1)}

    merged = claims.merge(SESSION, prompt_hashes, partial, EPOCHS)
    assert merged["decode-1"] == PrefixHit("decode-1", len(hashes), len(hashes)), "the larger wins"
    assert merged["prefill-0"] == partial["prefill-0"], "other workers' hits pass through"

    assert claims.merge(SESSION, prompt_hashes, caught_up, EPOCHS) == caught_up
    assert len(claims) == 0, "the worker's events rule from now on"
    assert claims.merge(SESSION, prompt_hashes, {}, EPOCHS) == {}, "e.g. after its `removed` event"


def test_forget_drops_only_the_named_workers_claim():
    _, hashes = _finished()
    claims = FinishedPrefixes()
    claims.record(SESSION, "decode-1", 7, hashes, len(hashes))
    claims.forget(SESSION, "decode-2")
    assert len(claims) == 1
    claims.forget(SESSION, "decode-1")
    assert len(claims) == 0 and claims.bytes == 0


def test_bounded_by_count_and_bytes_oldest_first():
    _, hashes = _finished()
    by_count = FinishedPrefixes(max_sessions=3)
    for i in range(5):
        by_count.record(f"t\x1fs{i}", "decode-1", 7, hashes, 0)
    assert len(by_count) == 3
    prompt_hashes = hashes + [1]
    assert by_count.merge("t\x1fs0", prompt_hashes, {}, EPOCHS) == {}
    assert "decode-1" in by_count.merge("t\x1fs4", prompt_hashes, {}, EPOCHS)

    one_entry = FinishedPrefixes()
    one_entry.record("t\x1fs0", "decode-1", 7, hashes, 0)
    by_bytes = FinishedPrefixes(max_bytes=2 * one_entry.bytes)
    for i in range(10):
        by_bytes.record(f"t\x1fs{i}", "decode-1", 7, hashes, 0)
    assert len(by_bytes) == 2 and by_bytes.bytes <= by_bytes.max_bytes


def test_a_huge_session_does_not_outgrow_the_byte_bound():
    hashes = block_hashes(_tokens(9, 64 * BS), BS, extra=EXTRA)
    claims = FinishedPrefixes(max_bytes=100)
    claims.record(SESSION, "decode-1", 7, hashes, 0)
    assert len(claims) == 0 and claims.bytes == 0


def test_bad_checkpoint_is_refused():
    _, hashes = _finished()
    with pytest.raises(ValueError, match="checkpoint_blocks"):
        FinishedPrefixes().record(SESSION, "decode-1", 7, hashes, len(hashes) + 1)


@pytest.mark.parametrize(
    "prompt, computed, local, expected",
    [
        (39, 78, True, 4),  # decode crossed 48 and 64: the rolling snapshot at 64
        (39, 78, False, 4),
        (100, 110, True, 6),  # no block end crossed: the prompt-end checkpoint at 96
        (100, 110, False, 0),  # disaggregated: the state arrived at 100, no checkpoint
        (96, 96, False, 6),  # ends on a block end: snapshot there
        (10, 12, True, 0),  # not one full block
    ],
)
def test_end_of_turn_checkpoint(prompt, computed, local, expected):
    assert end_of_turn_checkpoint(prompt, computed, BS, local) == expected
