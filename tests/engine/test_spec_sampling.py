"""Speculative sampling in the engine reproduces the target model's distribution.

Top-k 2 at temperature 1 leaves a tiny vocabulary: each of the three sampled tokens has two
candidates, so (t1, t2, t3) has 8 outcomes whose exact probabilities come from teacher-forced
forwards of the target. t1 comes from the prefill; t2 (and t3 when the draft is kept) from a verify
with one draft, drawn from a q that puts 60% of its mass on the target's distribution and 40% on a
token outside it (so drafts are accepted and rejected, and rejections draw from the residual).
800 seeded requests (prefix cache on: a 17-token prompt, 16 of them cached); chi-square with 7 degrees of freedom against p = 0.001 (deterministic seeds).
"""

from __future__ import annotations

import pytest
import torch

from engine.cache.tensors import CacheTensors
from engine.model_runner import ModelRunner, SeqChunk
from engine.sampling_params import SamplingParams
from engine.speculative.acceptance import processed_probs
from engine.speculative.drafter import Draft, Drafter
from tests.engine.spec_helpers import drain, engine, prompt
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

CHI2_7_P001 = 24.32
PARAMS = dict(temperature=1.0, top_k=2, max_tokens=3, ignore_eos=True)
N = 800


def exact_table(spec_engine, prompt_ids: list[int]) -> dict[tuple[int, ...], torch.Tensor]:
    """Context suffix (tokens after the prompt) -> the target's processed next-token distribution."""
    model, cfg = spec_engine.model, spec_engine.model_config
    params = SamplingParams(**PARAMS)
    table = {}

    def probs(suffix: tuple[int, ...]) -> torch.Tensor:
        runner = ModelRunner(model, CacheTensors.allocate(cfg, 4, 1, 16))
        ids = prompt_ids + list(suffix)
        logits = runner.forward([SeqChunk(ids, 0, [0, 1, 2, 3], 0)])
        return processed_probs(logits, params)[0]

    table[()] = probs(())
    for t1 in table[()].nonzero().flatten().tolist():
        table[(t1,)] = probs((t1,))
        for t2 in table[(t1,)].nonzero().flatten().tolist():
            table[(t1, t2)] = probs((t1, t2))
    return table


class MixtureDrafter(Drafter):
    def __init__(self, inner: Drafter, table, prompt_len: int, outside: int) -> None:
        super().__init__(inner.head)
        self.table, self.prompt_len, self.outside = table, prompt_len, outside

    def draft(self, requests) -> list[Draft]:
        drafts = []
        for r in requests:
            p = self.table[tuple(r.token_ids[self.prompt_len :])]
            q = 0.6 * p
            q[self.outside] += 0.4
            token = int(torch.multinomial(q, 1, generator=r.generator))
            drafts.append(Draft([token], q[None]))
        return drafts


def test_speculative_sampling_matches_the_target_distribution() -> None:
    model_dir = tiny_checkpoint("qwen3_next")
    prompt_ids = prompt(17, seed=41)
    # The prefix cache holds the first 16 prompt tokens after a warm-up request, so each sample
    # prefills one token (batched like a decode) instead of a whole prompt.
    spec = engine(model_dir, k=1, max_num_seqs=200, num_pages=512)
    spec.add_request("warm", prompt_ids, SamplingParams(**PARAMS, seed=10**6))
    drain(spec)
    table = exact_table(spec, prompt_ids)
    supports = {s for p in table.values() for s in p.nonzero().flatten().tolist()}
    outside = next(t for t in range(1000) if t not in supports)
    spec.spec.drafter = MixtureDrafter(spec.spec.drafter, table, len(prompt_ids), outside)
    outcomes: list[tuple[int, ...]] = []
    for batch in range(N // 200):
        for i in range(200):
            seed = batch * 200 + i
            spec.add_request(f"s{seed}", prompt_ids, SamplingParams(**PARAMS, seed=seed))
        outcomes.extend(tuple(tokens) for tokens in drain(spec).values())
    m = spec.metrics()
    assert 0 < m["spec_accepted"] < m["spec_drafted"]  # both branches ran
    cells = [
        (a, b, c)
        for key, p in table.items()
        if len(key) == 2
        for a, b in [key]
        for c in p.nonzero().flatten().tolist()
    ]
    expected = torch.tensor([float(table[()][a] * table[(a,)][b] * table[(a, b)][c]) for a, b, c in cells])
    counts = torch.tensor([float(outcomes.count(cell)) for cell in cells])
    assert counts.sum() == N, "an outcome outside the target's support was sampled"
    statistic = float(((counts - N * expected) ** 2 / (N * expected)).sum())
    assert statistic < CHI2_7_P001, (statistic, counts.tolist(), (N * expected).tolist())
