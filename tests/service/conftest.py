"""Fixtures for tests that run real router + worker processes."""

from __future__ import annotations

import pytest

from tests.helpers.checkpoints import tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return str(tiny_checkpoint("qwen3_next"))


@pytest.fixture(scope="session")
def reference_llm(tiny_model):
    from engine.llm import LLM

    return LLM(tiny_model)


def greedy_reference(llm, prompt_ids: list[int], max_tokens: int) -> list[int]:
    from engine.sampling_params import SamplingParams

    [result] = llm.generate([prompt_ids], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    return list(result.token_ids)
