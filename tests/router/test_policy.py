"""Each rule of the routing policy, on hand-computed cases."""

from __future__ import annotations

import pytest

from prefix_index import PrefixHit
from router.policy import NoRoutableWorker, RoutingConfig, RoutingPolicy, WorkerCandidate

pytestmark = pytest.mark.timeout(10)

BS = 16


def idle(worker_id: str, **load) -> WorkerCandidate:
    return WorkerCandidate(worker_id, free_pages=load.pop("free_pages", 1000), total_pages=1000, **load)


def hit(worker_id: str, blocks: int, checkpoint_blocks: int | None = None) -> PrefixHit:
    return PrefixHit(worker_id, blocks, blocks if checkpoint_blocks is None else checkpoint_blocks)


def route(policy=None, **kwargs):
    kwargs.setdefault("prefill_workers", [idle("p0"), idle("p1")])
    kwargs.setdefault("decode_workers", [idle("d0"), idle("d1")])
    kwargs.setdefault("hits", {})
    return (policy or RoutingPolicy()).route(**kwargs)


def test_the_worker_holding_the_prefix_wins_over_a_slightly_lighter_one() -> None:
    decision = route(
        prompt_tokens=4000,
        hits={"d1": hit("d1", 200)},
        decode_workers=[idle("d0"), idle("d1", queued_tokens=1000)],
    )
    assert decision.decode_worker == "d1"  # saves 3200 tokens, costs 1000 of queue
    # 800 uncached tokens ≥ 512: a prefill worker computes them, pulling the prefix from d1.
    assert decision.prefill_worker in ("p0", "p1")
    assert (decision.fetch_from, decision.fetch_blocks, decision.cached_tokens) == ("d1", 200, 3200)


def test_load_beats_cache_when_the_queue_costs_more_than_the_saving() -> None:
    decision = route(
        prompt_tokens=4000,
        hits={"d1": hit("d1", 20)},  # 320 tokens saved
        decode_workers=[idle("d0"), idle("d1", queued_tokens=2000)],
    )
    assert decision.decode_worker == "d0"


def test_only_a_checkpoint_ended_prefix_counts_for_a_hybrid_model() -> None:
    hits = {"d1": hit("d1", 200, checkpoint_blocks=0), "d0": hit("d0", 50, checkpoint_blocks=40)}
    decision = route(prompt_tokens=4000, hits=hits)
    assert decision.decode_worker == "d0"
    pure_attention = RoutingPolicy(RoutingConfig(require_checkpoint=False))
    assert route(pure_attention, prompt_tokens=4000, hits=hits).decode_worker == "d1"


def test_conditional_disaggregation_by_the_uncached_length() -> None:
    short = route(prompt_tokens=400)
    assert short.prefill_worker is None and "local prefill" in short.reason
    long = route(prompt_tokens=4000)
    assert long.prefill_worker in ("p0", "p1")
    cached_turn = route(prompt_tokens=4000, hits={"d0": hit("d0", 230)})  # 3680 cached, 320 new
    assert cached_turn.decode_worker == "d0" and cached_turn.prefill_worker is None
    assert cached_turn.cached_tokens == 3680
    no_prefill = route(prompt_tokens=4000, prefill_workers=[idle("p0", draining=True)])
    assert no_prefill.prefill_worker is None and "no prefill worker" in no_prefill.reason


def test_affinity_breaks_ties_even_without_a_bonus() -> None:
    policy = RoutingPolicy(RoutingConfig(affinity_bonus_tokens=0))
    for affine in ("d0", "d1"):
        assert route(policy, prompt_tokens=100, affinity_decode=affine).decode_worker == affine
        decision = route(policy, prompt_tokens=4000, affinity_prefill=affine.replace("d", "p"))
        assert decision.prefill_worker == affine.replace("d", "p")


def test_affinity_holds_under_small_load_differences_but_not_beyond_its_bound() -> None:
    policy = RoutingPolicy(RoutingConfig(affinity_bonus_tokens=500, affinity_max_overload_tokens=1000))
    slightly = [idle("d0"), idle("d1", queued_tokens=300)]
    assert (
        route(policy, prompt_tokens=100, decode_workers=slightly, affinity_decode="d1").decode_worker == "d1"
    )
    overloaded = [idle("d0"), idle("d1", queued_tokens=1200)]
    decision = route(policy, prompt_tokens=100, decode_workers=overloaded, affinity_decode="d1")
    assert decision.decode_worker == "d0"
    assert "affinity over load bound" in decision.explain()


def test_without_index_hits_routing_is_affinity_then_load() -> None:
    workers = [idle("d0", running_requests=3), idle("d1", running_requests=1), idle("d2", running_requests=2)]
    assert route(prompt_tokens=100, decode_workers=workers).decode_worker == "d1"
    assert route(prompt_tokens=100, decode_workers=workers, affinity_decode="d2").decode_worker == "d2"


def test_draining_workers_are_never_chosen() -> None:
    decision = route(
        prompt_tokens=4000,
        hits={"d0": hit("d0", 249), "p0": hit("p0", 249)},
        decode_workers=[idle("d0", draining=True), idle("d1", queued_tokens=5000)],
        prefill_workers=[idle("p0", draining=True), idle("p1", queued_tokens=5000)],
        affinity_decode="d0",
        affinity_prefill="p0",
    )
    assert (decision.decode_worker, decision.prefill_worker) == ("d1", "p1")
    assert decision.fetch_from is None  # a draining holder is no fetch source either
    with pytest.raises(NoRoutableWorker):
        route(prompt_tokens=100, decode_workers=[idle("d0", draining=True)])


def test_prefill_worker_fetches_a_longer_prefix_from_its_peer() -> None:
    decision = route(
        prompt_tokens=4000,
        hits={"p0": hit("p0", 150, checkpoint_blocks=128)},
        prefill_workers=[idle("p0", queued_tokens=8000), idle("p1")],
    )
    assert decision.prefill_worker == "p1"
    assert (decision.fetch_from, decision.fetch_blocks) == ("p0", 128)
    assert decision.cached_tokens == 128 * BS
    small_gain = route(
        prompt_tokens=4000,
        hits={"p0": hit("p0", 2)},
        prefill_workers=[idle("p0", queued_tokens=8000), idle("p1")],
    )
    assert small_gain.fetch_from is None and small_gain.cached_tokens == 0
    no_fetch = RoutingPolicy(RoutingConfig(fetch_enabled=False))
    assert route(no_fetch, prompt_tokens=4000, hits={"p0": hit("p0", 150)}).fetch_from is None


def test_the_last_prompt_token_is_always_computed() -> None:
    decision = route(prompt_tokens=160, hits={"d0": hit("d0", 10)})  # the whole prompt is cached
    assert decision.decode_worker == "d0" and decision.cached_tokens == 144


def test_explain_lists_every_candidate_with_its_score() -> None:
    decision = route(prompt_tokens=4000, hits={"d1": hit("d1", 100)}, affinity_decode="d0")
    table = decision.explain()
    assert decision.reason in table
    for worker in ("d0", "d1", "p0", "p1"):
        assert worker in table
    chosen = [row for row in decision.scores if row.chosen]
    assert {(r.role, r.worker_id) for r in chosen} == {("decode", "d1"), ("prefill", decision.prefill_worker)}
    assert max(r.score for r in decision.scores if r.role == "decode") == chosen[0].score


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        route(prompt_tokens=0)
    with pytest.raises(ValueError, match="duplicate"):
        route(prompt_tokens=10, decode_workers=[idle("d0"), idle("d0")])
    with pytest.raises(ValueError, match="fetch_value"):
        RoutingConfig(fetch_value=2.0)
    with pytest.raises(ValueError):
        RoutingConfig(block_size=0)


def test_local_prefill_resting_on_an_index_claim_names_the_worker_to_verify_with() -> None:
    """A claim (forgeable) turned 1,500 tokens into "local prefill: 12 uncached": the decision says
    which prefill worker takes over if the decode worker's reservation refutes it."""
    claimed = route(prompt_tokens=1500, hits={"d0": hit("d0", 93)}, prefill_workers=[idle("p0")])
    assert (claimed.decode_worker, claimed.prefill_worker) == ("d0", None)
    assert claimed.reason == "local prefill: 12 uncached tokens < 512"
    assert claimed.verify_with == "p0"
    short = route(prompt_tokens=100, hits={"d0": hit("d0", 4)}, prefill_workers=[idle("p0")])
    assert short.prefill_worker is None and short.verify_with is None, "local without the claim too"
    cold = route(prompt_tokens=100, prefill_workers=[idle("p0")])
    assert cold.verify_with is None
    alone = route(prompt_tokens=1500, hits={"d0": hit("d0", 93)}, prefill_workers=[])
    assert alone.verify_with is None, "no prefill worker: nothing to adapt to"
