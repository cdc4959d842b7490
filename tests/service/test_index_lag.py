"""The next turn of a session must not depend on when the decode worker's KV events reach the router.

Real processes (router + 1 prefill + 1 decode worker, embedded index, threshold 64, as `baton demo`).
The router's KV event feed is held back, so the index knows nothing of the session when its next
turn arrives (the race that made `test_demo` flaky). The router's own record of the finished turn
must route it to the decode worker, which computes only the new part; the tokens equal `engine.LLM`
alone. Once released, the worker's real events show what the record claimed. A claim the worker
does not hold (evicted; restarted) still serves correct tokens: the reservation refutes it, or the
new epoch voids it."""

from __future__ import annotations

import contextlib
import random
import threading

import pytest

from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from router.prompts import PreparedRequest
from tests.chaos.harness import WORKER_ARGS, list_workers, restart_worker, stream, wait_for
from tests.helpers.reference import greedy_reference

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
THRESHOLD = 64
BS = 16


@pytest.fixture(scope="module")
def cluster(tiny_model):
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=THRESHOLD)
    spec = ClusterSpec(tiny_model, worker_args=WORKER_ARGS, router=router)
    with LocalCluster(spec) as running:
        yield running


@contextlib.contextmanager
def held_kv_events(core):
    """The router's KV event feed (SubscribeKvEvents → embedded index) waits until the block ends."""
    registry, held, lock = core.registry, [], threading.Lock()
    apply = registry._apply

    def hold(batch) -> None:
        with lock:
            held.append(batch)

    registry._apply = hold
    try:
        yield held
    finally:
        del registry._apply
        with lock:
            for batch in held:
                apply(batch)


def _prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 1000) for _ in range(length)]


def _decode_worker(cluster) -> str:
    [handle] = cluster.router.core.registry.workers("decode")
    return handle.worker_id


def _index_hit(cluster, prompt: list[int]):
    """What the index alone (no finished claims) knows of the decode worker for this prompt."""
    worker = _decode_worker(cluster)
    return cluster.router.core._lookup("", prompt, "", [worker]).get(worker)


@pytest.mark.parametrize(
    "first_prompt, local_first",
    [(40, True), (100, False)],  # turn 1 prefilled by the decode worker itself, or disaggregated
    ids=["local-turn-1", "disaggregated-turn-1"],
)
def test_the_next_turn_is_local_before_the_kv_events_arrive(
    cluster, reference_llm, first_prompt, local_first
):
    session, first = f"lag-{first_prompt}", _prompt(first_prompt, first_prompt)
    with held_kv_events(cluster.router.core) as held:
        one = stream(cluster.address, token_ids=first, max_tokens=40, session_id=session)
        assert (one.prefill_worker == "") == local_first, one
        assert one.token_ids == greedy_reference(reference_llm, first, 40)
        second = first + one.token_ids + _prompt(first_prompt + 1, 20)
        assert _index_hit(cluster, second) is None, "the race: the index has heard nothing yet"
        routed = cluster.router.core.route(PreparedRequest("probe", session, "", second, None), second)
        assert routed.prefill is None and "last finish left it" in routed.reason, routed.explain_table

        two = stream(cluster.address, token_ids=second, max_tokens=6, session_id=session)

        computed = len(first) + len(one.token_ids) - 1  # the last sampled token was never fed back
        assert two.prefill_worker == "", f"turn 2 went to {two.prefill_worker}, recomputing everything"
        assert two.decode_worker == one.decode_worker
        assert two.cached_tokens == computed // BS * BS, "the decode worker computed only the new part"
        assert two.token_ids == greedy_reference(reference_llm, second, 6)
        assert held, "events were held back"
    # The worker's real events, once delivered, show what the router claimed at turn 1's finish.
    wait_for(lambda: _index_hit(cluster, second) is not None, 20, "the held events to reach the index")
    hit = _index_hit(cluster, second)
    assert hit.checkpoint_blocks * BS >= two.cached_tokens


def test_a_claim_the_worker_no_longer_holds_is_refuted_by_its_reservation(cluster, reference_llm):
    """As if the decode worker had evicted a finished turn before the next one: the router's record
    claims 112 cached tokens of 120, its reservation holds none; a prefill worker computes the prompt."""
    core, session = cluster.router.core, "evicted"
    prompt = _prompt(7, 120)
    prepared = PreparedRequest("probe", session, "", prompt, None)
    [decode] = core.registry.workers("decode")
    core.record_finish(prepared, decode, prompt + [5], attempt_prompt=len(prompt), local=True)
    routed = core.route(prepared, prompt)
    assert routed.prefill is None and routed.verify_with is not None, routed.reason
    assert routed.cached_tokens == 112

    result = stream(cluster.address, token_ids=prompt, max_tokens=6, session_id=session)

    assert result.prefill_worker, "the route adapted: a prefill worker computed the prompt"
    assert result.decode_worker == decode.worker_id and result.cached_tokens == 0
    assert result.token_ids == greedy_reference(reference_llm, prompt, 6)


def test_a_worker_dropped_after_the_snapshot_is_routed_as_a_handle(cluster, monkeypatch):
    """The chaos test's race: the registry drops a worker (killed) after `route` took its snapshot
    of routable workers. The route names the snapshot's handles, never None (a None handle made
    the attempt fail INTERNAL instead of failing over), including the claim's `verify_with`."""
    core, session = cluster.router.core, "dropped"
    prompt = _prompt(9, 120)
    prepared = PreparedRequest("probe", session, "", prompt, None)
    [decode] = core.registry.workers("decode")
    core.record_finish(prepared, decode, prompt + [5], attempt_prompt=len(prompt), local=True)
    monkeypatch.setattr(core.registry, "by_id", lambda worker_id: None)  # gone from the registry

    routed = core.route(prepared, prompt)

    assert routed.decode is decode
    assert routed.verify_with is not None and routed.verify_with.role == "prefill"


def test_a_restarted_decode_worker_voids_the_claim(cluster, reference_llm):
    """Last in this module: it restarts the decode worker."""
    session, first = "restarted", _prompt(11, 40)
    with held_kv_events(cluster.router.core):
        one = stream(cluster.address, token_ids=first, max_tokens=40, session_id=session)
        before = next(w for w in list_workers(cluster) if w.role == "decode")
        restart_worker(cluster.pool, before.worker_id)

        def rejoined() -> bool:
            now = [w for w in list_workers(cluster) if w.worker_id == before.worker_id]
            return len(now) == 1 and now[0].healthy and now[0].epoch > before.epoch

        wait_for(rejoined, 60, "the decode worker to rejoin with a new epoch")
        second = first + one.token_ids + _prompt(12, 20)
        two = stream(cluster.address, token_ids=second, max_tokens=6, session_id=session)
    assert two.cached_tokens == 0, "nothing of the session survived the restart"
    assert two.token_ids == greedy_reference(reference_llm, second, 6)
