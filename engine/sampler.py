"""Vectorized sampling over one step's batch of logits.

Order, as in the common engines: penalties (repetition on prompt+output, presence/frequency on the
output) -> greedy rows take the argmax -> temperature -> top-k -> top-p -> min-p -> a draw. The draw
is an exponential race (`argmax(p / E)`, E ~ Exp(1)), which samples exactly from p; each seeded
request draws its noise from its own `torch.Generator`, always `vocab` numbers per step, so a seed
gives the same tokens whatever else shares the batch. Logprobs are those of the raw model
distribution (before penalties and temperature), like vLLM's default.

Everything runs where the logits are. The per-row choices (greedy or not, top-k/top-p/min-p in use,
penalties) come from the host-side `SamplingParams`, never from reading tensors back, and the one
device-to-host copy of a step is the packed result: chosen ids and, when asked, logprobs.
Stop checks (`engine/finisher.py`) then run on those host ids, which costs no further transfer."""

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


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}  # shared by unseeded requests

    def __call__(self, logits: torch.Tensor, requests: list[SampleRequest]) -> SampleResult:
        return _to_host(logits.float(), self.choose(logits, requests), requests)

    def choose(self, logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
        """The chosen token ids as a [B] long tensor on the logits' device (nothing is read back)."""
        if logits.shape[0] != len(requests):
            raise ValueError(f"{logits.shape[0]} rows of logits for {len(requests)} requests")
        logits = logits.float()
        if any(r.params.uses_penalties for r in requests):
            logits = apply_penalties(logits.clone(), requests)
        token_ids = logits.argmax(dim=-1)
        random = [i for i, r in enumerate(requests) if not r.params.greedy]
        if random:
            rows = torch.tensor(random, dtype=torch.long).to(logits.device, non_blocking=True)
            token_ids[rows] = self._sample(logits[rows], [requests[i] for i in random])
        return token_ids

    def _sample(self, logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
        temperature = _row_values(requests, lambda p: p.temperature, logits)
        logits = logits / temperature.unsqueeze(1)
        logits = apply_top_k_top_p(logits, requests)
        probs = torch.softmax(logits, dim=-1)
        if any(r.params.min_p > 0 for r in requests):
            min_p = _row_values(requests, lambda p: p.min_p, probs)
            threshold = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < threshold, 0.0)
        noise = self._exponential_noise(requests, probs.shape[1], probs.device)
        return (probs / noise).argmax(dim=-1)

    def _exponential_noise(
        self, requests: list[SampleRequest], vocab: int, device: torch.device
    ) -> torch.Tensor:
        noise = torch.empty(len(requests), vocab, device=device)
        unseeded = [i for i, r in enumerate(requests) if r.generator is None]
        if len(unseeded) == len(requests):
            return noise.exponential_(generator=self._shared_generator(device)).clamp_min_(1e-20)
        if unseeded:
            rows = torch.tensor(unseeded, dtype=torch.long).to(device, non_blocking=True)
            shared = torch.empty(len(unseeded), vocab, device=device)
            noise[rows] = shared.exponential_(generator=self._shared_generator(device))
        for i, request in enumerate(requests):
            if request.generator is None:
                continue
            if request.generator.device == noise.device:
                noise[i].exponential_(generator=request.generator)
            else:  # a generator made on another device (e.g. CPU) keeps its own stream of draws
                row = torch.empty(vocab, device=request.generator.device)
                noise[i].copy_(row.exponential_(generator=request.generator), non_blocking=True)
        return noise.clamp_min_(1e-20)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = make_generator(self._seed, device)
        return self._generators[device]


def _row_values(requests: list[SampleRequest], pick, like: torch.Tensor) -> torch.Tensor:
    """One value per request from its params, as a [R] tensor on `like`'s device (a host-to-device
    copy, never a read-back)."""
    values = torch.tensor([pick(r.params) for r in requests], dtype=like.dtype)
    return values.to(like.device, non_blocking=True)


def _device_index(ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long).to(device, non_blocking=True)


def apply_penalties(logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
    """In place on the rows that use penalties; returns logits. Token counts are built on the
    device with one scatter over all penalized rows."""
    rows = [i for i, r in enumerate(requests) if r.params.uses_penalties]
    vocab, device = logits.shape[1], logits.device
    out_flat = [n * vocab + t for n, i in enumerate(rows) for t in requests[i].output_token_ids]
    prompt_flat = [
        n * vocab + t
        for n, i in enumerate(rows)
        if requests[i].params.repetition_penalty != 1.0
        for t in requests[i].prompt_token_ids
    ]
    counts = torch.zeros(len(rows) * vocab, dtype=logits.dtype, device=device)
    if out_flat:
        out_index = _device_index(out_flat, device)
        counts.index_add_(0, out_index, torch.ones(len(out_flat), dtype=logits.dtype, device=device))
    counts = counts.view(len(rows), vocab)
    seen = (counts > 0).reshape(-1)
    if prompt_flat:
        seen[_device_index(prompt_flat, device)] = True
    seen = seen.view(len(rows), vocab)
    picked = [requests[i] for i in rows]
    repetition = _row_values(picked, lambda p: p.repetition_penalty, logits).unsqueeze(1)
    frequency = _row_values(picked, lambda p: p.frequency_penalty, logits).unsqueeze(1)
    presence = _row_values(picked, lambda p: p.presence_penalty, logits).unsqueeze(1)
    index = _device_index(rows, device)
    block = logits[index]
    penalized = torch.where(block > 0, block / repetition, block * repetition)
    block = torch.where(seen & (repetition != 1.0), penalized, block)
    block = block - frequency * counts - presence * (counts > 0).to(block.dtype)
    logits[index] = block
    return logits


def apply_top_k_top_p(logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
    vocab, device = logits.shape[1], logits.device
    top_k_list = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in requests]
    use_k = any(k < vocab for k in top_k_list)
    use_p = any(r.params.top_p < 1.0 for r in requests)
    if not (use_k or use_p):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if use_k:
        top_k = _device_index(top_k_list, device)
        drop |= torch.arange(vocab, device=device).unsqueeze(0) >= top_k.unsqueeze(1)
    if use_p:
        top_p = _row_values(requests, lambda p: p.top_p, logits)
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before > top_p.unsqueeze(1)  # keeps the token that crosses top_p (and always one)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def compute_logprobs(
    raw: torch.Tensor, chosen: list[int], requests: list[SampleRequest]
) -> list[Logprob | None]:
    """Logprobs of the rows that asked for them, for ids already read back (the engine's path):
    packed on the logits' device and read back in one copy, only when some row asked."""
    if all(r.params.logprobs is None for r in requests):
        return [None] * len(requests)
    ids = torch.tensor(chosen, dtype=torch.long).to(raw.device, non_blocking=True)
    return _to_host(raw.float(), ids, requests).logprobs


def _to_host(raw: torch.Tensor, token_ids: torch.Tensor, requests: list[SampleRequest]) -> SampleResult:
    """The step's one device-to-host copy: ids and the asked-for logprobs packed in one fp64 tensor
    (ids < 2**53 are exact in fp64). Row layout: [id, logprob, top ids (n), top logprobs (n)]."""
    wanted = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
    if not wanted:
        return SampleResult(token_ids.tolist(), [None] * len(requests))
    top_n = max(requests[i].params.logprobs or 0 for i in wanted)
    index = _device_index(wanted, raw.device)
    logprobs = torch.log_softmax(raw[index], dim=-1)
    chosen = token_ids[index]
    packed = torch.zeros(len(requests), 2 + 2 * top_n, dtype=torch.float64, device=raw.device)
    packed[:, 0] = token_ids.double()
    packed[index, 1] = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).double()
    if top_n:
        top = logprobs.topk(top_n, dim=-1)
        packed[index, 2 : 2 + top_n] = top.indices.double()
        packed[index, 2 + top_n :] = top.values.double()
    host = packed.tolist()  # the single device-to-host copy
    result: list[Logprob | None] = [None] * len(requests)
    for i in wanted:
        n, row = requests[i].params.logprobs or 0, host[i]
        result[i] = Logprob(
            token_id=int(row[0]),
            logprob=row[1],
            top_token_ids=tuple(int(t) for t in row[2 : 2 + n]),
            top_logprobs=tuple(row[2 + top_n : 2 + top_n + n]),
        )
    return SampleResult([int(row[0]) for row in host], result)
