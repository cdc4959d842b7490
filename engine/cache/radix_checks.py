"""Validation of `RadixCache.insert` arguments, done before anything changes so a bad insert
leaves the tree, the pools and the caller's ownership exactly as they were."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.cache.radix import RadixCache


def check_insert(
    cache: RadixCache, page_ids: Sequence[int], num_blocks: int, checkpoints: dict[int, int]
) -> None:
    if len(page_ids) < num_blocks:
        raise ValueError(f"{num_blocks} full blocks but only {len(page_ids)} page ids")
    if checkpoints and not cache.has_state:
        raise ValueError("checkpoints given to a cache without state (has_state=False)")
    owned = cache.checkpoint_slots()
    for position, slot in checkpoints.items():
        if position <= 0 or position % cache.block_size or position > num_blocks * cache.block_size:
            raise ValueError(
                f"checkpoint position {position} is not a block end within the "
                f"{num_blocks * cache.block_size} cached tokens"
            )
        if slot in owned or cache.checkpoint_pool.is_free(slot):
            raise ValueError(f"checkpoint slot {slot} is not held by the caller")
    if len(set(checkpoints.values())) != len(checkpoints):
        raise ValueError("the same checkpoint slot is given for two positions")


def check_new_pages(cache: RadixCache, new_pages: Sequence[int]) -> None:
    if len(set(new_pages)) != len(new_pages):
        raise ValueError(f"a page id appears twice among the new blocks: {list(new_pages)}")
    for page in new_pages:
        if cache.is_cached_page(page):
            raise ValueError(f"page {page} is already cached for another block")
        if cache.page_pool.refcount(page) == 0:
            raise ValueError(f"page {page} is free; insert pages the sequence holds")
