"""`PrefixCache`: how the engine uses the hybrid radix cache (`engine.cache.radix.RadixCache`).

- Admission: a new (or preempted) sequence takes the longest cached prefix that ends at a state
  checkpoint, shares its pages, copies the checkpoint into its live slot and prefills only the rest.
- Checkpoints (the state after tokens [0, p), p a block end): at the end of each prompt (rounded
  down to a block: the scheduler ends a chunk there, unless the decode will pass the next block end
  and snapshot there anyway), every `checkpoint_every_blocks` blocks of a
  long prefill, at the block end where a request branches off the cached blocks (all chunk ends), and at the end of each finished sequence, so the next turn of a
  session continues from it. For the last one, decode keeps a rolling snapshot: whenever a decoding
  sequence reaches a block end its live state is copied into one checkpoint slot it holds, which
  goes to the tree when the sequence finishes. The copies run after the step's forward has returned.
- Pages of finished sequences stay in the tree (refcounted) until evicted under page pressure, which
  the block manager does before it preempts anyone.
- Sharing with peer engines (the global index's "fetch, not recompute"). Holder side:
  `export_prefix` pins the longest checkpoint-ended cached prefix of a prompt (its pages and its
  DeltaNet checkpoint) so a peer can read them; `release_export` unpins. Reader side: `begin_import`
  takes pages + a checkpoint slot for the blocks about to arrive, `commit_import` hands them to the
  tree (so the next request matches them like any cached prefix), `abort_import` gives them back.
A pure-attention model (no DeltaNet layers) needs no checkpoints: every cached block is usable.
Every method runs on the engine's thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.cache.events import KvEvent
from engine.cache.hashing import cache_extra
from engine.cache.page_pool import OutOfPages, PagePool
from engine.cache.radix import MatchHandle, PrefixMatch, RadixCache
from engine.cache.state_pool import StatePool
from engine.cache.tensors import CacheTensors
from engine.engine_config import EngineConfig
from engine.scheduled_chunk import ScheduledChunk
from engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExportedPrefix:
    page_ids: tuple[int, ...]
    checkpoint_slot: int | None
    num_tokens: int
    handle: MatchHandle


@dataclass(frozen=True, slots=True)
class ImportBuffer:
    page_ids: list[int]
    checkpoint_slot: int | None
    num_blocks: int


class PrefixUnavailable(RuntimeError):
    pass


class PrefixCache:
    def __init__(
        self,
        cache: CacheTensors,
        pages: PagePool,
        checkpoint_slot_ids: list[int],
        config: EngineConfig,
        *,
        has_state: bool,
        model_id: str,
        on_kv_event: Callable[[KvEvent], None] | None = None,
    ) -> None:
        self.cache = cache
        self.block_size = config.block_size
        self.checkpoint_spacing = config.checkpoint_every_blocks * config.block_size
        self.has_state = has_state
        self.model_id = model_id
        self.radix = RadixCache(
            pages, StatePool(checkpoint_slot_ids), config.block_size, has_state, on_kv_event
        )

    def extra(self, seq: Sequence) -> bytes:
        return cache_extra(self.model_id, seq.cache_salt)

    # ---- admission ---------------------------------------------------------------------------
    def attach_prefix(self, seq: Sequence) -> None:
        """Start an admitted sequence (live slot already held) from its longest cached prefix."""
        match = self.radix.match(seq.all_token_ids, self.extra(seq))
        try:
            if match.num_tokens:
                seq.block_table = list(match.page_ids)
                if match.checkpoint_slot is not None:
                    self.cache.copy_state(match.checkpoint_slot, seq.state_slot)
                seq.num_computed_tokens = match.num_tokens
        finally:
            self.radix.release(match.handle)
        seq.branch_pos = self._branch_point(seq, match.num_tokens)
        if not seq.admitted:
            seq.num_cached_tokens = min(match.num_tokens, seq.num_prompt_tokens)

    def _branch_point(self, seq: Sequence, usable: int) -> int:
        """Where this sequence leaves the cached blocks, when that lies past the usable (checkpointed)
        prefix: a checkpoint there lets the next request with the same prefix (another session on
        the same system prompt) reuse all of it. 0 when there is none to take."""
        if not self.has_state:
            return 0
        pages = self.radix.match_blocks(seq.all_token_ids, self.extra(seq))
        self.radix.page_pool.decref(pages)
        branch = len(pages) * self.block_size
        return branch if usable < branch < seq.num_tokens else 0

    def share_blocks(self, seq: Sequence) -> int:
        """Decode-side reservation: share every cached full block of the prompt (the state comes
        with the transfer, so no checkpoint is needed); returns how many."""
        seq.block_table = self.radix.match_blocks(seq.prompt_token_ids, self.extra(seq))
        return len(seq.block_table)

    # ---- scheduling --------------------------------------------------------------------------
    def chunk_end(self, seq: Sequence, start: int, end: int) -> int:
        """End a prefill chunk early at the next block end where a checkpoint is due."""
        if not self.has_state:
            return end
        due = [(start // self.checkpoint_spacing + 1) * self.checkpoint_spacing]
        prompt_end = self._prompt_checkpoint(seq)
        if prompt_end > start and self._decode_misses_a_block_end(seq):
            due.append(prompt_end)
        if seq.branch_pos > start:
            due.append(seq.branch_pos)
        cut = min(due)
        return cut if start < cut < end else end

    def _decode_misses_a_block_end(self, seq: Sequence) -> bool:
        """Whether the prompt-end checkpoint needs its own chunk boundary (costing one more step
        before the first token): not when the decode will reach the next block end anyway, since
        the rolling decode snapshot then serves the next turn just as well."""
        if seq.prefill_only:
            return True
        last_computed = seq.num_prompt_tokens + seq.params.max_tokens - 1
        return last_computed < self._prompt_checkpoint(seq) + self.block_size

    def _prompt_checkpoint(self, seq: Sequence) -> int:
        return seq.num_prompt_tokens // self.block_size * self.block_size

    def after_step(self, chunks: list[ScheduledChunk]) -> None:
        """Take the checkpoints due at the chunk ends just computed (call after the forward)."""
        for chunk in chunks:
            seq, position = chunk.seq, chunk.end
            if position % self.block_size:
                continue
            if position <= seq.num_prompt_tokens:
                due = position % self.checkpoint_spacing == 0 or position in (
                    self._prompt_checkpoint(seq),
                    seq.branch_pos,
                )
                if due:
                    self._insert(seq, position, with_checkpoint=self.has_state)
            elif self.has_state:
                self._snapshot(seq, position)

    def _snapshot(self, seq: Sequence, position: int) -> None:
        if seq.snapshot_slot is None:
            seq.snapshot_slot = self.radix.allocate_checkpoint()
            if seq.snapshot_slot is None:
                return
        self.cache.copy_state(seq.state_slot, seq.snapshot_slot)
        seq.snapshot_pos = position

    def _insert(self, seq: Sequence, position: int, with_checkpoint: bool) -> None:
        slot = self.radix.allocate_checkpoint() if with_checkpoint else None
        if slot is not None:
            self.cache.copy_state(seq.state_slot, slot)
        self._insert_with(seq, position, {position: slot} if slot is not None else {})

    def _insert_with(self, seq: Sequence, num_tokens: int, checkpoints: dict[int, int]) -> None:
        try:
            self.radix.insert(seq.token_slice(0, num_tokens), seq.block_table, self.extra(seq), checkpoints)
        except ValueError:
            log.exception("prefix cache insert of %s failed; continuing uncached", seq.request_id)
            for slot in checkpoints.values():
                self.radix.free_checkpoint(slot)

    # ---- end of a sequence -------------------------------------------------------------------
    def cache_finished(self, seq: Sequence) -> None:
        """Keep prompt + output in the tree, with a checkpoint at its last block end we have."""
        computed = seq.num_computed_tokens
        checkpoints: dict[int, int] = {}
        if self.has_state:
            if computed % self.block_size == 0 and computed > seq.snapshot_pos:
                self._snapshot(seq, computed)
            if seq.snapshot_slot is not None and seq.snapshot_pos > 0:
                checkpoints[seq.snapshot_pos] = seq.snapshot_slot
                seq.snapshot_slot = None
        self._insert_with(seq, computed, checkpoints)

    def drop_sequence(self, seq: Sequence) -> None:
        if seq.snapshot_slot is not None:
            self.radix.free_checkpoint(seq.snapshot_slot)
            seq.snapshot_slot = None
        seq.snapshot_pos = 0

    # ---- memory --------------------------------------------------------------------------------
    def evict_pages(self, num_pages: int) -> int:
        return self.radix.evict(num_pages)

    def stats(self) -> dict[str, int]:
        return {
            "checkpoints": self.radix.num_checkpoints,
            "cached_pages": self.radix.num_cached_blocks,
            "evictions": self.radix.evictions,
            "checkpoint_evictions": self.radix.checkpoint_evictions,
            "checkpoint_slots_free": self.radix.checkpoint_pool.num_free,
        }

    # ---- sharing with peers ----------------------------------------------------------------------
    def export_prefix(self, token_ids: list[int], cache_salt: str, max_blocks: int) -> ExportedPrefix:
        limit = min(len(token_ids) - 1, max_blocks * self.block_size) + 1  # match leaves one token uncomputed
        match = self.radix.match(token_ids[:limit], cache_extra(self.model_id, cache_salt))
        if match.num_tokens == 0 or (self.has_state and match.checkpoint_slot is None):
            self._drop_match(match)
            raise PrefixUnavailable("no checkpoint-ended cached prefix of that prompt here")
        return ExportedPrefix(tuple(match.page_ids), match.checkpoint_slot, match.num_tokens, match.handle)

    def release_export(self, exported: ExportedPrefix) -> None:
        self._drop_match(exported)

    def _drop_match(self, match: PrefixMatch | ExportedPrefix) -> None:
        self.radix.release(match.handle)
        if match.page_ids:
            self.radix.page_pool.decref(list(match.page_ids))

    def begin_import(self, num_blocks: int) -> ImportBuffer:
        if num_blocks <= 0:
            raise ValueError("nothing to import")
        page_ids = self._allocate_pages(num_blocks)
        slot = None
        if self.has_state:
            slot = self.radix.allocate_checkpoint()
            if slot is None:
                self.radix.page_pool.decref(page_ids)
                raise PrefixUnavailable("no checkpoint slot free for an imported prefix")
        return ImportBuffer(list(page_ids), slot, num_blocks)

    def _allocate_pages(self, num_pages: int) -> list[int]:
        pages = self.radix.page_pool
        if pages.num_free < num_pages:
            self.evict_pages(num_pages - pages.num_free)
        if pages.num_free < num_pages:
            raise OutOfPages(f"need {num_pages} pages, {pages.num_free} free after eviction")
        return pages.allocate(num_pages)

    def commit_import(self, buffer: ImportBuffer, token_ids: list[int], cache_salt: str) -> int:
        """The buffer now holds the KV of `token_ids[:num_blocks * block_size]` and the state at its end."""
        num_tokens = buffer.num_blocks * self.block_size
        checkpoints = {num_tokens: buffer.checkpoint_slot} if buffer.checkpoint_slot is not None else {}
        try:
            self.radix.insert(token_ids[:num_tokens], buffer.page_ids, cache_extra(self.model_id, cache_salt), checkpoints)
        except ValueError:
            self.abort_import(buffer)
            raise
        self.radix.page_pool.decref(buffer.page_ids)  # the tree holds its own references now
        return num_tokens

    def abort_import(self, buffer: ImportBuffer) -> None:
        if buffer.checkpoint_slot is not None:
            self.radix.free_checkpoint(buffer.checkpoint_slot)
        self.radix.page_pool.decref(buffer.page_ids)
