"""`Sequence`: the engine's record of one request, from arrival to release."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.sampler import Logprob
from engine.sampling_params import SamplingParams
from engine.tokenizer import IncrementalDecoder


class Status(enum.Enum):
    WAITING = "waiting"  # queued; owns no pages or slot
    RUNNING = "running"  # owns pages + a live slot; prefilling or decoding
    RESERVED = "reserved"  # decode side: pages + slot held, filled from outside, not yet committed
    PINNED = "pinned"  # prefill_only, done: pages + slot held for the transfer until release()
    FINISHED = "finished"  # everything returned


@dataclass(frozen=True, slots=True)
class PrefillResult:
    page_ids: list[int]  # pages covering positions [0, num_tokens)
    state_slot: int  # holds the DeltaNet state after consuming the num_tokens prompt tokens
    first_token: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class Reservation:
    page_ids: list[int]  # pages covering the whole prompt
    state_slot: int
    cached_blocks: int  # the first cached_blocks pages already hold the prefix: no transfer needed


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    logprobs: list[Logprob] | None = None  # one per new token, when requested
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    prefill: PrefillResult | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: int  # FCFS order
    prefill_only: bool = False
    cache_salt: str = ""
    layer_callback: Callable[[int, int, int], None] | None = None
    generator: torch.Generator | None = None
    detokenizer: IncrementalDecoder | None = None  # only when the request has stop strings
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in pages and whose state is in the slot
    block_table: list[int] = field(default_factory=list)
    state_slot: int | None = None
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    admitted: bool = False  # has been scheduled at least once (cache stats count once)
    snapshot_slot: int | None = None  # checkpoint slot with the state at the last block end of decode
    snapshot_pos: int = 0
    branch_pos: int = 0  # block end where the sequence leaves the cached blocks (a checkpoint is due)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prefill: PrefillResult | None = None

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def remaining_tokens(self) -> int:
        """Tokens still to compute before the next sample (1 for a decoding sequence)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.remaining_tokens > 1

    def token_slice(self, start: int, end: int) -> list[int]:
        prompt = len(self.prompt_token_ids)
        if end <= prompt:
            return self.prompt_token_ids[start:end]
        return (self.prompt_token_ids + self.output_token_ids)[start:end]
