"""Running prompts through an `LLMEngine` to the end, with every logits row it samples from."""

from __future__ import annotations

import torch

from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


def run_recording_logits(
    engine: LLMEngine,
    prompts: dict[str, list[int]],
    params: SamplingParams,
    logits: dict[str, list[torch.Tensor]],
) -> dict[str, list[int]]:
    """All prompts together to the end: the tokens per request id; each sampled row is appended to
    `logits[request_id]`."""
    engine.logits_observer = lambda rid, row: logits.setdefault(rid, []).append(row.clone())
    tokens: dict[str, list[int]] = {rid: [] for rid in prompts}
    for rid, ids in prompts.items():
        engine.add_request(rid, ids, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
    return tokens
