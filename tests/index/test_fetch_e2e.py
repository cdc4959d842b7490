"""Global index end to end: 2 prefill + 2 decode workers and a real Redis. A session's next turn
lands on a prefill worker that does not hold its context: it fetches the prefix from the peer that
does (pages + DeltaNet checkpoint through kvtransfer) and computes only the new tokens; greedy
tokens still equal engine.LLM alone. Then Redis dies mid-run: serving goes on, and when Redis comes
back the index is whole again."""

from __future__ import annotations

import random
import time

import grpc
import pytest

from baton.client import BatonClient
from baton_pb.v1 import admin_pb2, admin_pb2_grpc
from engine.cache.hashing import block_hashes, cache_extra
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.helpers.redis_server import redis_server
from tests.helpers.reference import greedy_reference

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(400)]
MAX_TOKENS = 12


def _workers(cluster) -> dict[str, admin_pb2.WorkerInfo]:
    admin = admin_pb2_grpc.BatonAdminStub(grpc.insecure_channel(cluster.admin_address))
    return {w.worker_id: w for w in admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10).workers}


def _wait(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_turn_on_another_prefill_worker_fetches_from_its_peer(tiny_model, reference_llm):
    rng = random.Random(11)
    vocab = reference_llm.engine.model_config.vocab_size
    with redis_server() as redis:
        router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=0)
        spec = ClusterSpec(tiny_model, prefill=2, decode=2, index=redis.url, router=router)
        with LocalCluster(spec) as cluster:
            client = BatonClient(cluster.address)
            prompt = [rng.randrange(5, vocab - 5) for _ in range(300)]
            first = client.generate(session_id="fetch", token_ids=prompt, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert first.token_ids == greedy_reference(reference_llm, prompt, MAX_TOKENS)
            holder = first.prefill_worker
            core = cluster.router.core
            hashes = block_hashes(prompt, 16, extra=cache_extra(core.model_id, ""))
            _wait(lambda: core.index.lookup(core.model_id, hashes).get(holder, None) is not None, what="index entries")

            # Force the next turn away from the holder: drain it (scale-down); it leaves the index.
            core.drain(holder, remove=True)
            _wait(lambda: holder not in _workers(cluster), timeout_s=60, what="the drained worker to leave")
            # The decode worker of turn 1 still holds prompt + output with a checkpoint near its end.

            turn2 = prompt + first.token_ids + [rng.randrange(5, vocab - 5) for _ in range(40)]
            second = client.generate(session_id="fetch", token_ids=turn2, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert second.token_ids == greedy_reference(reference_llm, turn2, MAX_TOKENS)
            assert second.prefill_worker and second.prefill_worker != holder
            assert second.fetched_tokens >= 256, second
            prefill_info = _workers(cluster)[second.prefill_worker].load
            assert prefill_info.fetched_tokens == second.fetched_tokens
            # it computed only what nobody had: the prompt minus the fetched prefix
            assert prefill_info.computed_tokens == len(turn2) - second.fetched_tokens

            # Redis dies mid-run: requests keep succeeding (affinity + load routing) ...
            redis.stop()
            third_prompt = turn2 + second.token_ids + [7] * 20
            third = client.generate(session_id="fetch", token_ids=third_prompt, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
            assert third.token_ids == greedy_reference(reference_llm, third_prompt, MAX_TOKENS)
            # ... and once it is back, the workers republish and the index is whole again.
            redis.restart()
            live = set(_workers(cluster))
            _wait(lambda: set(core.index.workers()) == live, timeout_s=30, what="all workers back in the index")
            hashes3 = block_hashes(third_prompt, 16, extra=cache_extra(core.model_id, ""))
            _wait(lambda: any(h.checkpoint_blocks for h in core.index.lookup(core.model_id, hashes3).values()),
                  timeout_s=30, what="turn 3's prefix in the index")  # fmt: skip
            client.close()
