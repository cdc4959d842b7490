"""Vectorized sampling over one step's batch of logits.

Order, as in the common engines: penalties (repetition on prompt+output, presence/frequency on the
output) -> greedy rows take the argmax -> temperature -> top-k -> top-p -> min-p -> a draw. The draw
is an exponential race (`argmax(p / E)`, E ~ Exp(1)), which samples exactly from p; each seeded
request draws its noise from its own `torch.Generator`, always `vocab` numbers per step, so a seed
gives the same tokens whatever else shares the batch. Logprobs are those of the raw model
distribution (before penalties and temperature), like vLLM's default."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class Logprob:
    token_id: int
    logprob: float
    top_token_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()


@dataclass(slots=True)
class SampleRequest:
    """What the sampler needs to know about one row of the batch."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None  # set when params.seed is set


@dataclass(frozen=True, slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[Logprob | None]


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self._generator = make_generator(seed)  # shared by unseeded requests

    def __call__(self, logits: torch.Tensor, requests: list[SampleRequest]) -> SampleResult:
        chosen = self.choose(logits, requests).tolist()
        return SampleResult(chosen, compute_logprobs(logits.float(), chosen, requests))

    def choose(self, logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
        """The chosen token ids as a [B] long tensor on the logits' device (nothing is read back)."""
        if logits.shape[0] != len(requests):
            raise ValueError(f"{logits.shape[0]} rows of logits for {len(requests)} requests")
        logits = logits.float()
        if any(r.params.uses_penalties for r in requests):
            logits = apply_penalties(logits.clone(), requests)
        greedy = [i for i, r in enumerate(requests) if r.params.greedy]
        if len(greedy) == len(requests):
            return logits.argmax(dim=-1)
        token_ids = torch.empty(len(requests), dtype=torch.long, device=logits.device)
        random = [i for i, r in enumerate(requests) if not r.params.greedy]
        if greedy:
            token_ids[greedy] = logits[greedy].argmax(dim=-1)
        token_ids[random] = self._sample(logits[random], [requests[i] for i in random])
        return token_ids

    def _sample(self, logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
        temperature = torch.tensor([r.params.temperature for r in requests], dtype=logits.dtype)
        logits = logits / temperature.unsqueeze(1)
        logits = apply_top_k_top_p(logits, requests)
        probs = torch.softmax(logits, dim=-1)
        min_p = torch.tensor([r.params.min_p for r in requests], dtype=probs.dtype)
        if bool((min_p > 0).any()):
            threshold = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < threshold, 0.0)
        noise = self._exponential_noise(requests, probs.shape[1])
        return (probs / noise).argmax(dim=-1)

    def _exponential_noise(self, requests: list[SampleRequest], vocab: int) -> torch.Tensor:
        noise = torch.empty(len(requests), vocab)
        unseeded = [i for i, r in enumerate(requests) if r.generator is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), vocab).exponential_(generator=self._generator)
        for i, request in enumerate(requests):
            if request.generator is not None:
                noise[i].exponential_(generator=request.generator)
        return noise.clamp_min_(1e-20)


def apply_penalties(logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
    """In place on the rows that use penalties; returns logits."""
    vocab = logits.shape[1]
    for i, request in enumerate(requests):
        params = request.params
        if not params.uses_penalties:
            continue
        row = logits[i]
        output = torch.tensor(request.output_token_ids, dtype=torch.long)
        counts = torch.zeros(vocab, dtype=row.dtype).scatter_add_(
            0, output, torch.ones_like(output, dtype=row.dtype)
        )
        if params.repetition_penalty != 1.0:
            seen = counts > 0
            if request.prompt_token_ids:
                seen[torch.tensor(request.prompt_token_ids, dtype=torch.long)] = True
            penalized = torch.where(row > 0, row / params.repetition_penalty, row * params.repetition_penalty)
            row.copy_(torch.where(seen, penalized, row))
        row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(row.dtype)
    return logits


def apply_top_k_top_p(logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
    vocab = logits.shape[1]
    top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else vocab for r in requests])
    top_p = torch.tensor([r.params.top_p for r in requests], dtype=logits.dtype)
    use_k, use_p = bool((top_k < vocab).any()), bool((top_p < 1.0).any())
    if not (use_k or use_p):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if use_k:
        drop |= torch.arange(vocab).unsqueeze(0) >= top_k.clamp_max(vocab).unsqueeze(1)
    if use_p:
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before > top_p.unsqueeze(1)  # keeps the token that crosses top_p (and always one)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def compute_logprobs(
    raw: torch.Tensor, chosen: list[int], requests: list[SampleRequest]
) -> list[Logprob | None]:
    wanted = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
    result: list[Logprob | None] = [None] * len(requests)
    if not wanted:
        return result
    logprobs = torch.log_softmax(raw[wanted], dim=-1)
    for row, i in enumerate(wanted):
        n = requests[i].params.logprobs or 0
        top = logprobs[row].topk(n) if n else None
        result[i] = Logprob(
            token_id=chosen[i],
            logprob=float(logprobs[row, chosen[i]]),
            top_token_ids=tuple(top.indices.tolist()) if top is not None else (),
            top_logprobs=tuple(top.values.tolist()) if top is not None else (),
        )
    return result
