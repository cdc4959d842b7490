"""Graceful termination: SIGTERM on a decode worker with live streams → it stops taking sessions
(health NOT_SERVING; the router sends new ones elsewhere), finishes the running streams (clients
get complete outputs, equal to engine.LLM), leaves the index, and exits 0."""

from __future__ import annotations

import random
import signal
import threading
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.cache.hashing import block_hashes, cache_extra
from engine.sampling_params import SamplingParams
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import WORKER_ARGS, Streamed, stream, wait_for
from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
STREAMS = 4
MAX_TOKENS = 48


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return -1
    return reply.status


def _indexed_on(cluster, prompt: list[int]) -> set[str]:
    core = cluster.router.core
    hashes = block_hashes(prompt, core.config.block_size, extra=cache_extra(core.model_id, ""))
    return set(core.index.lookup(core.model_id, hashes))


@pytest.mark.parametrize("index", ["embedded", "redis"])
def test_sigterm_drains_a_decode_worker(tiny_model, reference_llm, index):
    with RedisServer(prefer_docker=False) as redis:
        spec = ClusterSpec(
            tiny_model,
            prefill=0,
            decode=2,
            index=redis.url if index == "redis" else "embedded",
            worker_args=WORKER_ARGS,
            router=RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=1_000_000),
        )
        with LocalCluster(spec) as cluster:
            _drain_under_load(cluster, reference_llm)


def _drain_under_load(cluster, reference_llm) -> None:
    rng = random.Random(9)
    prompts = [[rng.randrange(5, 1000) for _ in range(40 + 8 * i)] for i in range(STREAMS)]
    seen = [Streamed() for _ in prompts]
    results: list[Streamed | BaseException | None] = [None] * STREAMS
    started = [threading.Event() for _ in prompts]

    def run(i: int) -> None:
        def on_tokens(partial: Streamed) -> None:
            seen[i] = partial
            started[i].set()

        try:
            results[i] = stream(
                cluster.address,
                token_ids=prompts[i],
                max_tokens=MAX_TOKENS,
                session_id=f"drain-{i}",
                on_tokens=on_tokens,
            )
        except BaseException as error:  # noqa: BLE001 - checked below
            results[i] = error
            started[i].set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    for event in started:
        assert event.wait(60), "a stream never started"
    victim_id, _ = Counter(s.decode_worker for s in seen).most_common(1)[0]
    victim = cluster.pool.find(victim_id)
    process = cluster.pool.process(victim_id)
    live = [i for i, s in enumerate(seen) if s.decode_worker == victim_id and results[i] is None]
    assert live, "the streams finished before the SIGTERM"

    process.send_signal(signal.SIGTERM)
    wait_for(
        lambda: _health(victim.address) != health_pb2.HealthCheckResponse.SERVING, 10, "health NOT_SERVING"
    )
    fresh_prompt = [rng.randrange(5, 1000) for _ in range(30)]
    fresh = stream(cluster.address, token_ids=fresh_prompt, max_tokens=4, session_id=f"drain-{live[0]}")
    assert fresh.decode_worker != victim_id, "a new session went to the draining worker"

    for thread in threads:
        thread.join(120)
    assert process.wait(60) == 0, "the drained worker exits 0"
    expected = _references(reference_llm, [*prompts, fresh_prompt], [MAX_TOKENS] * STREAMS + [4])
    assert fresh.token_ids == expected[-1]
    for i, result in enumerate(results):
        assert isinstance(result, Streamed), f"stream {i} failed: {result}"
        assert result.token_ids == expected[i], f"stream {i} is incomplete or differs from engine.LLM"
    cluster.router.core.registry.refresh()
    finished = [p + r.token_ids for p, r in zip(prompts, results, strict=True)]
    wait_for(
        lambda: not any(victim_id in _indexed_on(cluster, sequence) for sequence in finished),
        10,
        "the drained worker to leave the index",
    )
    if "--no-prefix-cache" not in WORKER_ARGS:  # the index still works: the survivor is listed
        wait_for(
            lambda: fresh.decode_worker in _indexed_on(cluster, fresh_prompt + fresh.token_ids),
            10,
            "the survivor in the index",
        )
    assert victim_id not in {m.worker_id for m in cluster.pool.members()}


def _references(llm, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    return [list(r.token_ids) for r in llm.generate(prompts, params)]
