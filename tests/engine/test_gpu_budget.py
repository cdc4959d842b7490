"""`--gpu-memory-utilization`: the cache budget is the fraction of the device minus this process's
own weights and activation reserve, so it does not depend on what other processes hold."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.engine_config import EngineConfig
from engine.gpu_budget import budget_bytes, resolve_cache_budget
from engine.llm_engine import LLMEngine
from engine.model_config import ModelConfig
from tests.helpers.checkpoints import tiny_checkpoint

GIB = 1 << 30


def test_two_processes_on_one_gpu_get_budgets_independent_of_start_order():
    total = 141 * GIB
    weights = 5 * GIB
    prefill = budget_bytes(0.45, total, weights, GIB)
    decode = budget_bytes(0.45, total, weights, GIB)
    assert prefill == decode == int(0.45 * total) - 6 * GIB
    assert prefill + decode + 2 * 6 * GIB <= total  # both fit together, whichever started first


def test_a_fraction_too_small_for_the_weights_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="weights take 5.00 GiB"):
        budget_bytes(0.02, 141 * GIB, 5 * GIB, GIB)


def test_the_fraction_needs_a_cuda_device():
    config = EngineConfig(gpu_memory_utilization=0.5)
    model_config = ModelConfig.from_json(tiny_checkpoint())
    with pytest.raises(ValueError, match="needs a cuda device"):
        resolve_cache_budget(config, model_config)
    with pytest.raises(ValueError, match="needs a cuda device"):
        LLMEngine(tiny_checkpoint(), config)
    assert resolve_cache_budget(EngineConfig(), model_config) == EngineConfig()


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, "half"])
def test_bad_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        EngineConfig(gpu_memory_utilization=bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_cuda_the_pages_follow_the_fraction():
    small = LLMEngine(tiny_checkpoint(), EngineConfig(device="cuda", gpu_memory_utilization=0.02))
    large = LLMEngine(tiny_checkpoint(), EngineConfig(device="cuda", gpu_memory_utilization=0.04))
    assert large.config.cache_bytes > small.config.cache_bytes
    assert large.cache.num_pages > small.cache.num_pages
    assert dataclasses.replace(
        small.config, cache_bytes=1, gpu_memory_utilization=None
    ) == dataclasses.replace(large.config, cache_bytes=1, gpu_memory_utilization=None)
