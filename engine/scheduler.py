"""Continuous batching: which sequences compute which tokens in the next step.

Each step has a token budget (`max_num_batched_tokens`). Running sequences go first, in arrival
order: a decoding one costs 1 token, a prefilling one a chunk (≤ `prefill_chunk_size`). Then waiting
sequences are admitted (FCFS) while budget, slots and pages last, so long prefills are chunked and
mixed with decodes. When pages run out the cache is evicted first; then the latest-arrived running
sequence is preempted by recompute: it frees everything and goes back to the front of the queue
with its prompt + generated tokens, to be prefilled again."""

from __future__ import annotations

from collections import deque

from engine.block_manager import BlockManager
from engine.cache.prefix_cache import PrefixCache
from engine.engine_config import EngineConfig
from engine.scheduled_chunk import ScheduledChunk
from engine.sequence import Sequence, Status


class Scheduler:
    def __init__(
        self, config: EngineConfig, memory: BlockManager, checkpoint_policy: PrefixCache | None = None
    ) -> None:
        self.config = config
        self.memory = memory
        self.checkpoint_policy = checkpoint_policy
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A sequence that already holds its memory (a committed reservation)."""
        seq.status = Status.RUNNING
        self.running.append(seq)
        self.running.sort(key=lambda s: s.arrival)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ---------------------------------------------------------------------------
    def schedule(self) -> list[ScheduledChunk]:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            end = self._chunk_end(seq, budget)
            while not self.memory.ensure_pages(seq, end):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, end))
                budget -= end - seq.num_computed_tokens
                index += 1
                continue
            break  # seq itself was preempted: nothing after it is left
        if not preempted:
            self._admit_waiting(chunks, budget)
        return chunks

    def _admit_waiting(self, chunks: list[ScheduledChunk], budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.memory.admit(seq):
                return
            end = self._chunk_end(seq, budget)
            if not self.memory.ensure_pages(seq, end):
                self.memory.free(seq)
                return
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, end))
            budget -= end - seq.num_computed_tokens

    def _chunk_end(self, seq: Sequence, budget: int) -> int:
        start = seq.num_computed_tokens
        size = min(seq.remaining_tokens, self.config.prefill_chunk_size, budget)
        end = start + max(size, 1)
        if self.checkpoint_policy is not None and end - start > 1:
            end = self.checkpoint_policy.chunk_end(seq, start, end)
        return end

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.memory.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
