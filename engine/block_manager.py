"""`BlockManager`: what a sequence owns in memory (pages for its KV, a live state slot) and how it
gets them: from the free pools, or shared out of the prefix cache. It *has* a page pool, a live slot
pool and, when the prefix cache is on, a `PrefixCache`; the scheduler decides who runs, this
decides whether the memory is there."""

from __future__ import annotations

from engine.cache.page_pool import OutOfPages, PagePool
from engine.cache.prefix_cache import PrefixCache
from engine.cache.state_pool import OutOfSlots, StatePool
from engine.cache.tensors import CacheTensors
from engine.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(
        self,
        cache: CacheTensors,
        pages: PagePool,
        live_slots: StatePool,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.cache = cache
        self.block_size = cache.block_size
        self.pages = pages
        self.live_slots = live_slots
        self.prefix_cache = prefix_cache

    # ---- admission -------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> bool:
        """Give a waiting sequence a live slot holding the state at its starting point: a cached
        checkpoint (sharing the prefix's pages) when the prefix cache has one, else zeros."""
        try:
            slot = self.live_slots.allocate()
        except OutOfSlots:
            return False
        seq.state_slot = slot
        seq.num_computed_tokens = 0
        seq.block_table = []
        if self.prefix_cache is not None:
            self.prefix_cache.attach_prefix(seq)
        if seq.num_computed_tokens == 0:
            self.cache.zero_state(slot)
        return True

    def ensure_pages(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table to cover positions [0, num_tokens); False if memory is short even
        after evicting unreferenced cached blocks (nothing is allocated then)."""
        needed = blocks_for(num_tokens, self.block_size) - len(seq.block_table)
        if needed <= 0:
            return True
        if not self._make_room(needed):
            return False
        seq.block_table.extend(self.pages.allocate(needed))
        return True

    def _make_room(self, num_pages: int) -> bool:
        if self.pages.num_free >= num_pages:
            return True
        if self.prefix_cache is not None:
            self.prefix_cache.evict_pages(num_pages - self.pages.num_free)
        return self.pages.num_free >= num_pages

    def allocate_pages(self, num_pages: int) -> list[int]:
        if not self._make_room(num_pages):
            raise OutOfPages(f"need {num_pages} pages, {self.pages.num_free} free after eviction")
        return self.pages.allocate(num_pages)

    # ---- release ---------------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        """Return everything the sequence holds (pages shared with the cache just lose one ref)."""
        if self.prefix_cache is not None:
            self.prefix_cache.drop_sequence(seq)
        if seq.block_table:
            self.pages.decref(seq.block_table)
            seq.block_table = []
        if seq.state_slot is not None:
            self.live_slots.free(seq.state_slot)
            seq.state_slot = None
        seq.num_computed_tokens = 0
