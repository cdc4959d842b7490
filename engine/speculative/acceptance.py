"""Which drafted tokens a verify pass accepts.

Greedy: the longest prefix of the drafts equal to the target's argmax at each position, then the
target's argmax after it (a correction, or the bonus token when all k drafts agree) — the same
tokens the target alone would produce.

Sampling (temperature > 0): standard speculative rejection sampling. Draft j was drawn from q_j;
it is kept with probability min(1, p_j(d) / q_j(d)); the first rejected position instead draws
from normalise(max(0, p_j - q_j)); when every draft is kept a bonus token is drawn from p_k. Each
emitted token is then distributed exactly as p (the target's processed distribution). p and q are
computed by `processed_probs`: temperature, top-k, top-p, min-p, as the sampler applies them.
"""

from __future__ import annotations

import torch

from engine.sampler import SampleRequest, apply_top_k_top_p
from engine.sampling_params import SamplingParams


def processed_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[T, V] fp32 logits → the distribution the sampler draws from, per row (rows sum to 1)."""
    logits = logits.float() / params.temperature
    requests = [SampleRequest(params, [], [])] * logits.shape[0]
    probs = torch.softmax(apply_top_k_top_p(logits, requests), dim=-1)
    if params.min_p > 0:
        threshold = params.min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < threshold, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] → [N] the argmax per row, the first of tied maxima (as the sampler's `argmax`). On
    CPU `max(dim).indices` (its kernel scans each row keeping the first maximum, NaN first, as
    `argmax` does; ~2.5x faster at a verify's few rows of a small vocabulary); elsewhere `argmax`
    (CUDA's `max` may return another of tied maxima)."""
    if logits.device.type == "cpu":
        return logits.max(dim=-1).indices
    return logits.argmax(dim=-1)


def accept_greedy_tokens(best: list[int], drafts: list[int]) -> list[int]:
    """best: the target's argmax at the k+1 verified positions → the tokens to emit (1..k+1)."""
    emitted = []
    for j, token in enumerate(drafts):
        if token != best[j]:
            break
        emitted.append(token)
    emitted.append(best[len(emitted)])
    return emitted


def accept_sampled(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    drafts: list[int],
    generator: torch.Generator | None,
) -> list[int]:
    """target_probs [k+1, V], draft_probs [k, V] (each draft drawn from its row) → tokens to emit."""
    uniforms = torch.rand(len(drafts) + 1, generator=generator).tolist()
    emitted: list[int] = []
    for j, token in enumerate(drafts):
        p, q = float(target_probs[j, token]), float(draft_probs[j, token])
        if q > 0 and uniforms[j] * q < p:  # u < p / q, without dividing
            emitted.append(token)
            continue
        residual = (target_probs[j] - draft_probs[j]).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:  # p == q (within rounding): the draft was rejected by u alone
            residual = target_probs[j]
        emitted.append(_draw(residual, generator))
        return emitted
    emitted.append(_draw(target_probs[len(drafts)], generator))
    return emitted


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from an (unnormalised, non-negative) probability row."""
    return _draw(probs, generator)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs.double(), 1, generator=generator))
