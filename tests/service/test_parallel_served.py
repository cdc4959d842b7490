"""Multi-rank workers served end to end: decode workers of 2 ranks (--tp 2, gloo on the CPU) behind
the real router give the tokens of `engine.LLM` alone, and killing one rank of a worker takes the
whole worker down (exit 70): the stream fails over or ends with UNAVAILABLE, never hangs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from baton.client import BatonClient
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.chaos.harness import stream, wait_for
from tests.helpers.reference import greedy_reference
from worker.ranks import RANK_DIED_EXIT_CODE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
MAX_TOKENS = 12


def _follower_pids(worker_pid: int) -> list[int]:
    """The worker's spawned rank processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    pids = []
    for pid in map(int, children):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            pids.append(pid)
    return pids


def test_tp2_decode_workers_equal_one_engine_and_a_dead_rank_fails_the_worker(tiny_model, reference_llm):
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=1_000_000)
    spec = ClusterSpec(tiny_model, prefill=0, decode=2, worker_args=("--tp", "2"), router=router)
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        prompt: list[int] = []
        for turn in range(3):
            prompt = prompt + [(37 * turn + 11 * j) % 1000 + 3 for j in range(30)]
            result = client.generate(
                session_id="tp", token_ids=prompt, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True
            )
            assert result.token_ids == greedy_reference(reference_llm, prompt, MAX_TOKENS), turn
            prompt = prompt + result.token_ids
        assert result.cached_tokens > 0  # later turns hit the (single, rank 0) radix tree
        client.close()

        long_prompt = [(13 * j) % 1000 + 3 for j in range(40)]
        expected = greedy_reference(reference_llm, long_prompt, 200)
        killed: list[str] = []

        def kill_rank_1(seen) -> None:
            if not killed and len(seen.token_ids) >= 3:
                worker = cluster.pool.process(seen.decode_worker)
                os.kill(_follower_pids(worker.pid)[0], signal.SIGKILL)
                killed.append(seen.decode_worker)

        started = time.monotonic()
        try:
            seen = stream(
                cluster.address, token_ids=long_prompt, max_tokens=200, on_tokens=kill_rank_1, timeout_s=120
            )
            outcome = "finished"
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            outcome = "unavailable"
        elapsed = time.monotonic() - started
        assert killed, "the stream ended before a rank was killed"
        if outcome == "finished":
            assert seen.token_ids == expected  # failed over to the other worker, resumed exactly
        worker = cluster.pool.process(killed[0])
        wait_for(lambda: worker.poll() is not None, 10, "the worker with a dead rank to exit")
        assert worker.returncode == RANK_DIED_EXIT_CODE
        print(f"rank killed: stream {outcome} after {elapsed:.1f} s")


@pytest.mark.parametrize("prefill_tp", [2, 1], ids=["tp2-to-tp2", "tp1-to-tp2-resharded"])
def test_disaggregated_into_a_tp2_decode_worker_equals_one_engine(tiny_model, reference_llm, prefill_tp):
    """Every prompt is prefilled by the prefill worker and shipped rank to rank (split on arrival
    when the prefill worker has one rank); the second turn ships only what the decode worker lacks."""
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=0)
    spec = ClusterSpec(
        tiny_model, prefill=1, decode=1, prefill_args=("--tp", str(prefill_tp)), decode_args=("--tp", "2"), router=router
    )
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        prompt: list[int] = []
        for turn in range(2):
            prompt = prompt + [(41 * turn + 7 * j) % 1000 + 3 for j in range(45)]
            result = client.generate(
                session_id="shards", token_ids=prompt, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True
            )
            assert result.token_ids == greedy_reference(reference_llm, prompt, MAX_TOKENS), turn
            assert result.prefill_worker, "the prompt was not prefilled by the prefill worker"
            prompt = prompt + result.token_ids
        client.close()
        print(f"prefill tp={prefill_tp} -> decode tp=2: equal over 2 turns ({len(prompt)} tokens)")
