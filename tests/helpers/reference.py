"""Reference outputs for service-level tests: `engine.LLM` run alone."""

from __future__ import annotations


def greedy_reference(llm, prompt_ids: list[int], max_tokens: int) -> list[int]:
    from engine.sampling_params import SamplingParams

    [result] = llm.generate([prompt_ids], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    return list(result.token_ids)
