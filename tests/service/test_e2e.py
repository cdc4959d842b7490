"""End to end: a router, a prefill worker and a decode worker as real processes talking gRPC (and
once under Ray); streamed greedy tokens must equal `engine.LLM` run alone."""

from __future__ import annotations

import random

import grpc
import pytest

from baton.client import BatonClient
from baton_pb.v1 import admin_pb2, admin_pb2_grpc
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.helpers.reference import greedy_reference

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
MAX_TOKENS = 12


def _session_turns(vocab: int, seed: int, turns: int = 3) -> list[list[int]]:
    """New text of each turn (the prompt of turn k+1 = prompt k + output k + this)."""
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab - 5) for _ in range(rng.randint(40, 120))] for _ in range(turns)]


def _run_session(client: BatonClient, llm, session_id: str, seed: int, **route_kw) -> list:
    vocab = llm.engine.model_config.vocab_size
    prompt: list[int] = []
    results = []
    for turn, new_tokens in enumerate(_session_turns(vocab, seed)):
        prompt = prompt + new_tokens
        result = client.generate(
            session_id=session_id, token_ids=prompt, temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **route_kw
        )
        expected = greedy_reference(llm, prompt, MAX_TOKENS)
        assert result.token_ids == expected, f"{session_id} turn {turn}: served tokens differ from engine.LLM"
        assert result.finish_reason == "length"
        assert result.prompt_tokens == len(prompt)
        results.append(result)
        prompt = prompt + result.token_ids
    return results


def _router(**overrides) -> RouterConfig:
    return RouterConfig(model="", listen="127.0.0.1:0", **overrides)


@pytest.mark.parametrize("transfer", ["tcp", "ucx"])
def test_disaggregated_sessions_match_engine(tiny_model, reference_llm, transfer):
    if transfer == "ucx":
        pytest.importorskip("ucxx", reason="the UCX library (ucxx) cannot load here")
    spec = ClusterSpec(tiny_model, transfer=transfer, router=_router(local_prefill_threshold=0))
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        for session in range(2):
            results = _run_session(client, reference_llm, f"s{session}", seed=session)
            assert all(r.prefill_worker and r.decode_worker for r in results), "every turn is disaggregated"
            assert results[0].cached_tokens == 0
            assert all(r.cached_tokens > 0 for r in results[1:]), [r.cached_tokens for r in results]
        client.close()


def test_colocated_path_and_admin(tiny_model, reference_llm):
    spec = ClusterSpec(tiny_model, router=_router(local_prefill_threshold=1_000_000))
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        results = _run_session(client, reference_llm, "colocated", seed=7)
        assert all(not r.prefill_worker for r in results), "short prompts prefill on the decode worker"
        assert all(r.cached_tokens > 0 for r in results[1:])
        admin = admin_pb2_grpc.BatonAdminStub(grpc.insecure_channel(cluster.admin_address))
        workers = admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=10).workers
        assert sorted(w.role for w in workers) == ["decode", "prefill"]
        assert all(w.healthy for w in workers)
        client.close()


@pytest.mark.ray
def test_under_ray(tiny_model, reference_llm):
    pytest.importorskip("ray")
    spec = ClusterSpec(tiny_model, pool="ray", router=_router(local_prefill_threshold=0))
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        results = _run_session(client, reference_llm, "ray-session", seed=3)
        assert results[-1].cached_tokens > 0
        client.close()
