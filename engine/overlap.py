"""Overlap scheduling: the host plans step N+1 while the device runs step N.

A step is launched (forward, sampling, the start of the token copy: all queued on the device),
then the scheduler plans the next step from the *expected* state, in which every sequence that
just sampled continues decoding with one more token, and only then are step N's tokens read. The
expected tokens are placeholders (`PLACEHOLDER`); reading swaps in the real ones. Sequences that
finish (a stop token, an abort) lose their place in the plan before it runs; sequences that surely
finish at this token (max_tokens, max_model_len, prefill_only) are left out of it from the start,
so they never hold memory for a step they will not take. As in SGLang's and TokenSpeed's overlap
schedulers, the price is that a freed seat is refilled one step later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.sampler import SampleRequest
from engine.scheduled_chunk import ScheduledChunk
from engine.scheduler import Scheduler
from engine.sequence import Sequence, Status
from engine.token_readback import PendingTokens

PLACEHOLDER = -1  # an expected token not read yet; not a token id, so a forward would reject it


@dataclass(slots=True)
class LaunchedStep:
    """A step whose forward and sampling are queued; its tokens are read by `PendingTokens.read`."""

    index: int
    seqs: list[Sequence]  # the sequences that sample this step, in row order
    requests: list[SampleRequest]
    logits: torch.Tensor  # their logits rows (logprobs are computed from them after the read)
    tokens: PendingTokens
    expecting: list[Sequence] | None = None  # sequences holding a PLACEHOLDER token


def plan_ahead(scheduler: Scheduler, launched: LaunchedStep, max_model_len: int) -> list[ScheduledChunk]:
    """Schedule the next step as if each sampling sequence decodes on (see the module docstring)."""
    launched.expecting = []
    for seq in launched.seqs:
        if surely_finishes(seq, max_model_len):
            scheduler.remove(seq)
            continue
        seq.output_token_ids.append(PLACEHOLDER)
        launched.expecting.append(seq)
    return scheduler.schedule()


def surely_finishes(seq: Sequence, max_model_len: int) -> bool:
    """The token being sampled ends the sequence whatever it is (the Finisher's length rules)."""
    after = len(seq.output_token_ids) + 1
    return seq.prefill_only or after >= seq.params.max_tokens or seq.num_tokens + 1 >= max_model_len


def drop_expectations(launched: LaunchedStep) -> None:
    """Remove the placeholders before the real tokens are appended."""
    for seq in launched.expecting or ():
        if seq.output_token_ids and seq.output_token_ids[-1] == PLACEHOLDER:
            seq.output_token_ids.pop()
    launched.expecting = None


def still_runnable(plan: list[ScheduledChunk]) -> list[ScheduledChunk]:
    """The chunks of a plan made ahead whose sequence still runs from where the plan expects."""
    return [c for c in plan if c.seq.status is Status.RUNNING and c.start == c.seq.num_computed_tokens]


StepTrace = Callable[[str, int], None]  # (event, step index): "schedule" | "launch" | "read"
