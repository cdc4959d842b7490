"""One GPU, two roles: a prefill and a decode worker share the GPU as two processes, each with its
own --gpu-memory-utilization; a multi-turn greedy session through the router equals engine.LLM on
the same GPU and reports cached tokens from turn 2 (bench/gpu_workers.py's serve_path part)."""

from __future__ import annotations

import pytest
import torch

from bench.gpu_workers import parse_args, serve_path
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]


def test_one_gpu_two_roles_greedy_equals_llm_with_cached_turns():
    args = parse_args(
        ["--device", "cuda", "--model", str(tiny_checkpoint()), "--gpu-memory-utilization", "0.1"]
    )
    result = serve_path(args)
    assert result["served_equals_llm"], (result["served"], result["reference"])
    assert result["cached_from_turn_2"], result["cached_tokens"]
