"""The cache budget on a GPU from `EngineConfig.gpu_memory_utilization`, like vLLM's.

budget = utilization x the device's total memory - what this process already holds (the weights,
counted by torch's allocator, not by the driver's free memory) - a reserve for one step's
activations. Counting only this process's own allocations is what makes two workers on one GPU
(a prefill and a decode process, each with its own fraction) size the same whichever starts first.
"""

from __future__ import annotations

import dataclasses

import torch

from engine.engine_config import EngineConfig
from engine.model_config import ModelConfig

ACTIVATION_FLOATS_PER_TOKEN = 16  # hidden-sized fp32 rows alive at once in one step (generous)


def activation_reserve(model_config: ModelConfig, config: EngineConfig) -> int:
    """Bytes for one step's activations: fp32 logits, MLP and hidden rows per batched token."""
    per_token = (
        model_config.vocab_size
        + model_config.intermediate_size
        + ACTIVATION_FLOATS_PER_TOKEN * model_config.hidden_size
    )
    return config.max_num_batched_tokens * per_token * 4


def budget_bytes(utilization: float, total_bytes: int, held_bytes: int, reserve_bytes: int) -> int:
    """The cache budget; a clear error when the fraction does not even hold the weights."""
    budget = int(utilization * total_bytes) - held_bytes - reserve_bytes
    if budget <= 0:
        raise ValueError(
            f"gpu_memory_utilization={utilization} gives {utilization * total_bytes / 2**30:.2f} GiB of the "
            f"device's {total_bytes / 2**30:.2f} GiB; the weights take {held_bytes / 2**30:.2f} GiB and one "
            f"step's activations {reserve_bytes / 2**30:.2f} GiB, leaving nothing for the cache: raise it"
        )
    return budget


def resolve_cache_budget(config: EngineConfig, model_config: ModelConfig) -> EngineConfig:
    """`config` with `cache_bytes` from the GPU fraction (call after the weights are loaded)."""
    if config.gpu_memory_utilization is None:
        return config
    device = torch.device(config.device)
    if device.type != "cuda":
        raise ValueError(f"gpu_memory_utilization needs a cuda device, got device={config.device!r}")
    total = torch.cuda.get_device_properties(device).total_memory
    held = torch.cuda.memory_allocated(device)
    reserve = activation_reserve(model_config, config)
    return dataclasses.replace(
        config, cache_bytes=budget_bytes(config.gpu_memory_utilization, total, held, reserve)
    )
