"""`SpecDecoder`: one engine step with speculative decoding (what `LLMEngine.step` calls instead of
its plain forward + sample when `EngineConfig.num_speculative_tokens` > 0 and the checkpoint has
an MTP head).

Per step: decoding sequences that may speculate get k drafts from the MTP head, pages for the
k extra positions and k spare state slots; their chunk becomes a verify chunk [last token, drafts]
whose DeltaNet state after position j lands in step slot j. One target forward runs the whole
mixed batch (prefill chunks, plain decodes, verify chunks). Then each verify is accepted
(`engine.speculative.acceptance`), the slot of the last accepted position is promoted to live
(`SpecSlotPool.promote`: an index update), pages past the accepted positions go back, and the
accepted tokens are appended like sampled ones. Nothing on this path copies a state; the prefix
cache's block-end snapshots (checkpoints, as without speculation) are the only state copies.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from engine.block_manager import blocks_for
from engine.model_runner import SeqChunk
from engine.sampler import make_generator
from engine.scheduled_chunk import ScheduledChunk
from engine.sequence import RequestOutput, Sequence
from engine.speculative.acceptance import (
    accept_greedy_tokens,
    accept_sampled,
    greedy_tokens,
    processed_probs,
)
from engine.speculative.drafter import Draft, Drafter, DraftRequest, SeqSpecState
from engine.speculative.metrics import SpecMetrics
from engine.speculative.policy import AdaptivePolicy, FixedPolicy
from engine.speculative.slots import SpecSlotPool


@dataclass
class _Verify:
    index: int  # chunk index
    draft: Draft
    step_slots: list[int]


def _policy(engine, k: int) -> FixedPolicy | AdaptivePolicy:
    """Adaptive when the config asks for it; with CUDA graphs it chooses between 0 and k drafts
    only (verify graphs are captured for k + 1 rows)."""
    if not engine.config.adaptive_speculation:
        return FixedPolicy(k)
    return AdaptivePolicy((0, k) if engine.runner.graphs is not None else tuple(range(k + 1)))


def _step_clock(device: str):
    """What a step costs: on a CPU running torch on this thread alone, this thread's CPU time (a
    shared machine's other load barely moves it); else wall time."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


class SpecDecoder:
    def __init__(self, engine, drafter: Drafter, num_drafts: int) -> None:
        self.engine = engine
        self.drafter = drafter
        self.k = num_drafts
        self.states: dict[str, SeqSpecState] = {}
        self.metrics = SpecMetrics()
        self.policy = _policy(engine, num_drafts)
        self._clock = _step_clock(engine.config.device)
        self._generator = make_generator(engine.config.seed + 1)  # unseeded sampled requests

    @property
    def pool(self) -> SpecSlotPool:
        return self.engine.memory.live_slots

    def eligible(self, seq: Sequence) -> bool:
        """Requests whose tokens a verify can reproduce exactly: no penalties (they depend on the
        tokens drafted in between), no logprobs, no stop strings (checked token by token)."""
        p = seq.params
        return not (seq.prefill_only or p.uses_penalties or p.logprobs is not None or seq.detokenizer)

    # ---- one step ------------------------------------------------------------------------------
    def step(self, chunks: list[ScheduledChunk]) -> list[RequestOutput]:
        engine = self.engine
        started = self._clock()
        copies = engine.cache.state_copies
        self._forget_gone()
        drafts = self.policy.choose(len(chunks))
        verifies = self._plan(chunks, drafts)
        hidden, rows = self._forward(chunks, verifies)
        if engine.runner.graphs is not None:  # the MTP states keep views of it; a replay reuses it
            hidden = hidden.clone()
        self.metrics.state_copies += engine.cache.state_copies - copies
        plain = [i for i in range(len(chunks)) if i not in verifies]
        for i in plain:
            chunks[i].seq.num_computed_tokens = chunks[i].end
            self._record(chunks[i].seq, chunks[i].start, hidden[rows[i][0] : rows[i][1]])
        if engine.prefix_cache is not None:
            engine.prefix_cache.after_step([chunks[i] for i in plain])
        sampling = [i for i in plain if chunks[i].samples]
        # Every logit row this step needs, in one lm head call (one gather under tp): the
        # sampling chunks' last rows, then each verify's rows.
        wanted = [rows[i][1] - 1 for i in sampling]
        for index in verifies:
            wanted.extend(range(*rows[index]))
        logits = engine.runner.hidden_logits(hidden, wanted) if wanted else None
        outputs = []
        if sampling:
            outputs.extend(engine.sample([chunks[i] for i in sampling], logits[: len(sampling)]))
        verify_logits = logits[len(sampling) :] if verifies else None
        best = self._greedy_targets(chunks, verifies, rows, verify_logits)
        at = 0
        for index, verify in verifies.items():
            start, end = rows[index]
            own, at = verify_logits[at : at + end - start], at + end - start
            outputs.append(self._accept(chunks[index], verify, hidden[start:end], own, best.get(index)))
        self._observe(chunks, verifies, drafts, self._clock() - started)
        return outputs

    def _observe(self, chunks: list[ScheduledChunk], verifies: dict, drafts: int, seconds: float) -> None:
        """The policy's cost samples: steps of decoding sequences only (no prefill chunk in them),
        every one drafting (`drafts` each) or none (a plain step)."""
        if verifies and len(verifies) != len(chunks):
            return
        if all(c.end - c.start == 1 and c.start > 0 for c in chunks):
            drafts = drafts if verifies else 0
            self.policy.observe(len(chunks), drafts, seconds)
            self.metrics.count_step(drafts)

    def _greedy_targets(self, chunks, verifies: dict[int, _Verify], rows, logits) -> dict[int, list[int]]:
        """The target's argmax at every row of every greedy verify (`logits`: the verifies' rows in
        order): one argmax and one read-back for all of them (per sequence, these dominated a
        batch's acceptance)."""
        if not any(chunks[i].seq.params.greedy for i in verifies):
            return {}
        flat = greedy_tokens(logits).tolist()
        best, at = {}, 0
        for i in verifies:
            count = rows[i][1] - rows[i][0]
            if chunks[i].seq.params.greedy:
                best[i] = flat[at : at + count]
            at += count
        return best

    def _plan(self, chunks: list[ScheduledChunk], drafts: int) -> dict[int, _Verify]:
        requests, indices = [], []
        for i, c in enumerate(chunks):
            num_drafts = self._num_drafts(c, drafts)
            if num_drafts == 0:
                continue
            seq = c.seq
            if not self.pool.attach_spares(seq.state_slot, self.k):
                continue
            if not self.engine.memory.ensure_pages(seq, seq.num_tokens + num_drafts):
                continue
            generator = seq.generator if seq.generator is not None else self._generator
            state = self.states[seq.request_id]
            requests.append(DraftRequest(state, seq.all_token_ids, num_drafts, seq.params, generator))
            indices.append(i)
        drafts = self.drafter.draft(requests)
        verifies = {}
        for i, draft in zip(indices, drafts, strict=True):
            seq = chunks[i].seq
            slots = [seq.state_slot, *self.pool.spares(seq.state_slot)[: len(draft.tokens)]]
            verifies[i] = _Verify(i, draft, slots)
        return verifies

    def _num_drafts(self, c: ScheduledChunk, drafts: int) -> int:
        seq = c.seq
        if drafts == 0 or not (c.samples and c.end - c.start == 1 and c.start > 0 and self.eligible(seq)):
            return 0
        state = self.states.get(seq.request_id)
        if state is None or state.seq is not seq or state.hidden_end != seq.num_computed_tokens:
            return 0
        if state.hidden_end <= state.mtp_pos:
            return 0
        room = min(
            seq.params.max_tokens - len(seq.output_token_ids),
            self.engine.max_model_len - seq.num_tokens,
        )
        return max(0, min(drafts, room - 1))

    def _forward(self, chunks: list[ScheduledChunk], verifies: dict[int, _Verify]):
        seq_chunks = []
        for i, c in enumerate(chunks):
            seq = c.seq
            if i in verifies:
                tokens = [seq.all_token_ids[-1], *verifies[i].draft.tokens]
                seq_chunks.append(
                    SeqChunk(tokens, c.start, list(seq.block_table), seq.state_slot, verifies[i].step_slots)
                )
            else:
                seq_chunks.append(
                    SeqChunk(seq.token_slice(c.start, c.end), c.start, list(seq.block_table), seq.state_slot)
                )
        watchers = [c for c in chunks if c.seq.layer_callback is not None]

        def on_layer(layer_index: int) -> None:
            for c in watchers:
                c.seq.layer_callback(layer_index, c.start, c.end)

        return self.engine.runner.forward_hidden(seq_chunks, on_layer if watchers else None)

    # ---- acceptance ----------------------------------------------------------------------------
    def _accept(
        self,
        chunk: ScheduledChunk,
        verify: _Verify,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        best: list[int] | None,
    ) -> RequestOutput:
        """`hidden` / `logits`: the verify's k + 1 rows; `best`: their argmax when greedy."""
        engine, seq = self.engine, chunk.seq
        drafts = verify.draft.tokens
        if best is not None:  # greedy: the target's argmax per row, computed for the whole batch
            emitted = accept_greedy_tokens(best, drafts)
        else:
            generator = seq.generator if seq.generator is not None else self._generator
            target = processed_probs(logits, seq.params)
            emitted = accept_sampled(target, verify.draft.probs, drafts, generator)
        self.metrics.record(len(drafts), len(emitted) - 1)
        self.policy.record_acceptance(len(drafts), len(emitted) - 1)
        emitted = emitted[: self._tokens_before_finish(seq, emitted)]
        computed = len(emitted)  # positions start .. start + computed - 1 are now in KV and state
        old_live = seq.state_slot
        new_live = verify.step_slots[computed - 1]
        self.pool.promote(old_live, new_live)  # the live state IS the last accepted slot
        seq.state_slot = new_live
        seq.num_computed_tokens = chunk.start + computed
        self._release_pages(seq)
        self._record(seq, chunk.start, hidden[:computed])
        self._snapshots(seq, chunk.start, verify.step_slots[:computed])
        outputs = [engine.append_token(seq, token, None) for token in emitted]
        tokens = [t for o in outputs for t in o.new_token_ids]
        return dataclasses.replace(outputs[-1], new_token_ids=tokens)

    def _tokens_before_finish(self, seq: Sequence, emitted: list[int]) -> int:
        """How many of `emitted` get appended before the finisher would stop the sequence."""
        p, eos = seq.params, self.engine.eos_token_ids
        for i, token in enumerate(emitted):
            if (not p.ignore_eos and token in eos) or token in p.stop_token_ids:
                return i + 1
            if len(seq.output_token_ids) + i + 1 >= p.max_tokens:
                return i + 1
            if seq.num_tokens + i + 1 >= self.engine.max_model_len:
                return i + 1
        return len(emitted)

    def _release_pages(self, seq: Sequence) -> None:
        """Pages only rejected positions used go back (their KV is overwritten when reused)."""
        keep = blocks_for(seq.num_computed_tokens + 1, self.engine.config.block_size)
        if len(seq.block_table) > keep:
            self.engine.memory.pages.decref(seq.block_table[keep:])
            del seq.block_table[keep:]

    def _snapshots(self, seq: Sequence, start: int, slots: list[int]) -> None:
        """The prefix cache's decode snapshots at block ends the verify passed: slots[j] holds the
        state at position start + j + 1 (the cache copies it, as it copies a decode's live slot)."""
        prefix_cache = self.engine.prefix_cache
        if prefix_cache is None:
            return
        live = seq.state_slot
        for j, slot in enumerate(slots):
            position = start + j + 1
            if position % prefix_cache.block_size == 0:
                seq.state_slot = slot
                try:
                    prefix_cache.after_step([ScheduledChunk(seq, start, position)])
                finally:
                    seq.state_slot = live

    # ---- per-sequence MTP inputs ---------------------------------------------------------------
    def _record(self, seq: Sequence, start: int, rows: torch.Tensor) -> None:
        if not self.eligible(seq) or rows.shape[0] == 0:
            return
        state = self.states.get(seq.request_id)
        if state is None or state.seq is not seq or state.hidden_end != start:
            if state is not None:
                self.drafter.forget(state)
            self.states[seq.request_id] = self.drafter.new_state(seq, start, rows)
        else:
            state.append(rows)

    def _forget_gone(self) -> None:
        sequences = self.engine.sequences
        for request_id in [r for r, s in self.states.items() if sequences.get(r) is not s.seq]:
            self.drafter.forget(self.states.pop(request_id))
