"""Shared helpers of the speculative-decoding tests."""

from __future__ import annotations

import torch

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.speculative.drafter import Draft, Drafter

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(3, 1000, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(
    engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams = GREEDY
) -> dict[str, list[int]]:
    for request_id, ids in prompts.items():
        engine.add_request(request_id, ids, params)
    return drain(engine)


def drain(engine: LLMEngine, out: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    out = {} if out is None else out
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    return out


def engine(model_dir, k: int = 0, **options) -> LLMEngine:
    options.setdefault("num_pages", 256)
    return LLMEngine(model_dir, EngineConfig(num_speculative_tokens=k, **options))


class OracleDrafter(Drafter):
    """The real MTP drafter (so its code runs), whose greedy drafts are then replaced by the known
    continuation with the draft at a varying index made wrong: every acceptance length 0..k occurs
    in one run, mixed across the batch. Only the proposal changes; verification is untouched."""

    def __init__(
        self, inner: Drafter, reference: dict[str, list[int]], prompts: dict[str, list[int]]
    ) -> None:
        super().__init__(inner.head)
        self.reference = reference
        self.prompts = prompts
        self.calls = 0

    def draft(self, requests) -> list[Draft]:
        drafts = super().draft(requests)
        for r, d in zip(requests, drafts, strict=True):
            request_id = r.state.seq.request_id
            known = len(r.token_ids) - len(self.prompts[request_id])
            truth = self.reference[request_id][known : known + r.num_drafts]
            truth += [0] * (r.num_drafts - len(truth))
            self.calls += 1
            wrong_at = self.calls % (r.num_drafts + 1)  # == num_drafts: all right
            if wrong_at < r.num_drafts:
                truth[wrong_at] = (truth[wrong_at] + 1) % 1000
            d.tokens = truth
        return drafts


def use_oracle(engine: LLMEngine, reference: dict[str, list[int]], prompts: dict[str, list[int]]) -> None:
    engine.spec.drafter = OracleDrafter(engine.spec.drafter, reference, prompts)
