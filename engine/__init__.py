"""Baton's model runtime. Public names load lazily, so light modules (`engine.tokenizer`,
`engine.cache.hashing`, `engine.sampling_params`) can be imported without pulling in torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LLM": "engine.llm",
    "GenerationResult": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "EngineConfig": "engine.engine_config",
    "SamplingParams": "engine.sampling_params",
    "RequestOutput": "engine.sequence",
    "PrefillResult": "engine.sequence",
    "Reservation": "engine.sequence",
    "Logprob": "engine.sampler",
    "Tokenizer": "engine.tokenizer",
    "ModelConfig": "engine.model_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
