"""`LLM`: the offline API. Text or token ids in, finished generations out, one engine in-process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampler import Logprob
from engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None
    logprobs: list[Logprob] | None = None
    num_cached_tokens: int = 0


class LLM:
    def __init__(self, model_dir: str | Path, **engine_options: Any) -> None:
        self.engine = LLMEngine(model_dir, EngineConfig.from_options(**engine_options))
        self.tokenizer = self.engine.tokenizer
        self._next_id = 0

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[GenerationResult]:
        """Runs every prompt to completion (continuous batching inside); results in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompt_ids = [self._encode(p) for p in prompts]
        all_params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompt_ids)
        if len(all_params) != len(prompt_ids):
            raise ValueError(f"{len(all_params)} SamplingParams for {len(prompt_ids)} prompts")
        ids = []
        for ids_of_prompt, p in zip(prompt_ids, all_params, strict=True):
            request_id = f"llm-{self._next_id}"
            self._next_id += 1
            self.engine.add_request(request_id, ids_of_prompt, p)
            ids.append(request_id)
        tokens: dict[str, list[int]] = {r: [] for r in ids}
        logprobs: dict[str, list[Logprob]] = {r: [] for r in ids}
        final: dict[str, Any] = {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                tokens[output.request_id].extend(output.new_token_ids)
                logprobs[output.request_id].extend(output.logprobs or [])
                if output.finished:
                    final[output.request_id] = output
        return [
            self._result(prompt, tokens[r], logprobs[r], final[r], p)
            for r, prompt, p in zip(ids, prompt_ids, all_params, strict=True)
        ]

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer.json next to the model; pass token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def _result(
        self, prompt: list[int], tokens: list[int], logprobs: list[Logprob], final: Any, params
    ) -> GenerationResult:
        text = self.tokenizer.decode(tokens) if self.tokenizer is not None else ""
        if isinstance(final.stop_reason, str) and final.stop_reason in text:
            text = text[: text.index(final.stop_reason)]  # stop strings are not part of the text
        return GenerationResult(
            text=text,
            token_ids=tokens,
            prompt_token_ids=prompt,
            finish_reason=final.finish_reason,
            stop_reason=final.stop_reason,
            logprobs=logprobs if params.logprobs is not None else None,
            num_cached_tokens=final.num_cached_tokens,
        )
