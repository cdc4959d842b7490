"""Redis faults against real processes (router + a prefill and a decode worker publishing to a real
Redis): a key of the wrong type and 20,000 fake live workers leave Generate working (affinity + load,
counted); an epoch poisoned to 10^30 is reset by the worker, whose publisher comes back; a forged
prefix claim cannot make the router skip prefill: the route adapts and the tokens equal the reference."""

from __future__ import annotations

import random
import time

import pytest

from engine.cache.hashing import block_hashes, cache_extra
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import WORKER_ARGS, stream
from tests.helpers.redis_server import RedisServer
from tests.helpers.reference import greedy_reference

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.timeout(240)]
THRESHOLD = 64
BS = 16
P = "team-a"  # --redis-key-prefix of the router and the workers


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tiny_model, redis_server):
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=THRESHOLD, redis_key_prefix=P)
    worker_args = (*WORKER_ARGS, "--redis-key-prefix", P)
    spec = ClusterSpec(tiny_model, index=redis_server.url, worker_args=worker_args, router=router)
    with LocalCluster(spec) as running:
        yield running


@pytest.fixture
def raw(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def _prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 195) for _ in range(length)]


def _decode_worker(cluster) -> str:
    [handle] = cluster.router.core.registry.workers("decode")
    return handle.worker_id


def _lookup_errors(cluster) -> float:
    counter = cluster.router.core.metrics.index_errors
    return sum(sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total"))


def _indexed_after_serving(cluster, seed: int, reference_llm) -> bool:
    """Serves a fresh prompt (tokens checked), then waits until the router's own lookup finds the
    decode worker holding it: the worker's publisher is alive and Redis answers lookups again."""
    prompt = _prompt(seed, 40)
    result = stream(cluster.address, token_ids=prompt, max_tokens=6)
    assert result.token_ids == greedy_reference(reference_llm, prompt, 6)
    core, worker = cluster.router.core, _decode_worker(cluster)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if worker in core._lookup("", prompt, "", [worker]):
            return True
        time.sleep(0.1)
    return False


def _wait_until(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_key_of_the_wrong_type_leaves_generate_working(cluster, raw, reference_llm):
    assert raw.hlen(f"{P}:epoch") == 2 and not raw.exists("baton:epoch"), "both sides use the key prefix"
    errors = _lookup_errors(cluster)
    raw.delete(f"{P}:epoch")
    raw.set(f"{P}:epoch", "a string where a hash belongs")
    prompt = _prompt(10, 30)
    result = stream(cluster.address, token_ids=prompt, max_tokens=6)
    assert result.finish_reason == "length"
    assert result.token_ids == greedy_reference(reference_llm, prompt, 6)
    assert _lookup_errors(cluster) > errors, "the fault is counted in baton_router_index_errors_total"
    # The workers' heartbeats repair the registry: lookups work again.
    _wait_until(lambda: raw.type(f"{P}:epoch") == b"hash" and raw.hlen(f"{P}:epoch") == 2)
    assert _indexed_after_serving(cluster, 11, reference_llm)


def test_twenty_thousand_fake_live_workers_leave_generate_working(cluster, raw, reference_llm):
    namespace = cluster.router.core.model_id
    fakes = [f"fake-{i}" for i in range(20_000)]
    pipe = raw.pipeline(transaction=False)
    pipe.sadd(f"{P}:ns:{namespace}", *fakes)
    pipe.hset(f"{P}:epoch", mapping=dict.fromkeys(fakes, "1"))
    for fake in fakes:
        pipe.set(f"{P}:lease:{fake}", "1", px=600_000)
    pipe.execute()
    errors = _lookup_errors(cluster)
    assert _indexed_after_serving(cluster, 20, reference_llm), "the real worker is still found"
    assert _lookup_errors(cluster) == errors


def test_an_epoch_poisoned_to_ten_to_the_thirty_is_reset_and_the_publisher_recovers(cluster, raw, reference_llm):
    worker = _decode_worker(cluster)
    good = int(raw.hget(f"{P}:epoch", worker))
    raw.hset(f"{P}:epoch", worker, str(10**30))
    _wait_until(lambda: int(raw.hget(f"{P}:epoch", worker) or 0) == good)  # the worker's heartbeat
    assert _indexed_after_serving(cluster, 30, reference_llm), "the publisher publishes again"


def test_a_forged_claim_cannot_skip_prefill(cluster, raw, reference_llm):
    """The index claims the decode worker holds the whole prompt, so the policy picks "local prefill:
    8 uncached tokens". The worker's reservation holds none: the route turns disaggregated."""
    worker = _decode_worker(cluster)
    namespace = cluster.router.core.model_id
    epoch = raw.hget(f"{P}:epoch", worker).decode()
    prompt = _prompt(40, 200)
    hashes = block_hashes(prompt, BS, extra=cache_extra(namespace, ""))
    forged = {h.to_bytes(8, "big"): 3 for h in hashes}  # 3: the block and a checkpoint at its end
    raw.hset(f"{P}:w:{namespace}\0{worker}\0{epoch}", mapping=forged)
    raw.sadd(f"{P}:ns:{namespace}", worker)
    explained = cluster.router.core.route(_prepared(prompt), prompt)
    assert explained.prefill is None and explained.verify_with is not None, explained.reason

    result = stream(cluster.address, token_ids=prompt, max_tokens=6)
    assert result.prefill_worker, "the route adapted: a prefill worker computed the prompt"
    assert result.decode_worker == worker
    assert result.cached_tokens == 0
    assert result.token_ids == greedy_reference(reference_llm, prompt, 6)


def _prepared(prompt: list[int]):
    from engine.sampling_params import SamplingParams
    from router.prompts import PreparedRequest

    return PreparedRequest("probe", "", "", prompt, SamplingParams(max_tokens=1))
