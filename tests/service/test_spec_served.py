"""Speculative decoding over the served path: decode workers started with `--spec-tokens 2` on the
trained checkpoint stream the same greedy tokens as `engine.LLM` without speculation, across the
prefill/decode split (the MTP head starts from transferred state) and prefix-cache hits on later
turns, and the router's worker list shows the drafts they accepted."""

from __future__ import annotations

import pytest

from baton.client import BatonClient
from engine.llm import LLM
from engine.training.evaluate import held_out_prompts
from engine.training.shipped import shipped_checkpoint
from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from tests.helpers.reference import greedy_reference
from worker.config import worker_config_from_args

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
MAX_TOKENS = 24


def test_spec_tokens_flag_parses_and_is_bounded() -> None:
    spec_config = worker_config_from_args("decode", ["--model", "m", "--spec-tokens", "2"])
    assert spec_config.engine.num_speculative_tokens == 2
    assert worker_config_from_args("decode", ["--model", "m"]).engine.num_speculative_tokens == 0
    with pytest.raises(SystemExit):
        worker_config_from_args("decode", ["--model", "m", "--spec-tokens", "9"])


def test_served_greedy_with_speculation_equals_engine_without() -> None:
    model_dir = shipped_checkpoint()
    if model_dir is None:
        pytest.skip("no shipped trained checkpoint (assets/trained-qwen3_next)")
    llm = LLM(model_dir, enable_prefix_cache=False)
    router = RouterConfig(model="", listen="127.0.0.1:0", local_prefill_threshold=0)
    spec = ClusterSpec(str(model_dir), router=router, worker_args=("--spec-tokens", "2"))
    with LocalCluster(spec) as cluster:
        client = BatonClient(cluster.address)
        for session, new_text in enumerate(held_out_prompts(model_dir, 2, 32)):
            prompt: list[int] = []
            for turn in range(2):
                prompt = prompt + (new_text[:20] if turn == 0 else new_text[20:])
                result = client.generate(
                    session_id=f"s{session}",
                    token_ids=prompt,
                    temperature=0.0,
                    max_tokens=MAX_TOKENS,
                    ignore_eos=True,
                )
                assert result.token_ids == greedy_reference(llm, prompt, MAX_TOKENS), (session, turn)
                assert result.prefill_worker, (
                    "disaggregated: the decode worker speculates on transferred state"
                )
                prompt = prompt + result.token_ids
        client.close()
        decode = [w for w in cluster.router.core.list_workers().workers if w.role == "decode"]
        assert sum(w.load.spec_accepted for w in decode) > 0
        assert sum(w.load.spec_drafted for w in decode) >= sum(w.load.spec_accepted for w in decode)
