import pytest

from engine.cache.hashing import block_hashes, cache_extra
from engine.cache.page_pool import PagePool
from engine.cache.radix import RadixCache
from engine.cache.state_pool import StatePool

pytestmark = pytest.mark.timeout(30)
BS = 4
A = cache_extra("model", "tenant-a")
B = cache_extra("model", "tenant-b")


def make(has_state=True, pages=32, checkpoints=8):
    events = []
    pool, slots = PagePool(pages), StatePool(range(1000, 1000 + checkpoints))
    return RadixCache(pool, slots, BS, has_state, on_event=events.append), pool, slots, events


def run_sequence(cache, pool, tokens, extra=A, checkpoint_at=(), start=None):
    """What the engine does: match, take fresh pages for the rest, insert with checkpoints, free."""
    match = cache.match(tokens, extra) if start is None else start
    cache.release(match.handle)
    table = list(match.page_ids) + pool.allocate(-(-len(tokens) // BS) - len(match.page_ids))
    checkpoints = {p: cache.allocate_checkpoint() for p in checkpoint_at}
    result = cache.insert(tokens, table, extra, checkpoints)
    pool.decref(table)
    return match, result


def test_multi_turn_growth_reuses_up_to_the_last_turn_end():
    cache, pool, _, _ = make()
    turn1 = list(range(10))  # 2 full blocks + 2 tokens
    run_sequence(cache, pool, turn1, checkpoint_at=[8])
    turn2 = turn1 + [50, 51, 52, 53, 54, 55, 56]  # 17 tokens
    match, _ = run_sequence(cache, pool, turn2, checkpoint_at=[16])
    assert match.num_tokens == 8 and match.checkpoint_slot is not None
    turn3 = turn2 + [60] * 9
    match = cache.match(turn3, A)
    assert match.num_tokens == 16 and match.num_blocks == 4
    cache.release(match.handle)
    pool.decref(match.page_ids)
    assert cache.num_cached_blocks == 4 and cache.num_checkpoints == 2


def test_shared_system_prompt_across_sessions():
    cache, pool, _, _ = make()
    system = [7] * 12
    _, first = run_sequence(cache, pool, system + [1, 2, 3, 4, 5], checkpoint_at=[12, 16])
    match_b = cache.match(system + [9, 9, 9, 9, 9], A)
    assert match_b.num_tokens == 12
    assert match_b.page_ids == first.page_ids[:3]  # the very same pages, shared
    assert all(pool.refcount(p) == 2 for p in match_b.page_ids)  # tree + session B
    cache.release(match_b.handle)
    pool.decref(match_b.page_ids)


def test_tenant_isolation():
    cache, pool, _, _ = make()
    run_sequence(cache, pool, list(range(13)), extra=A, checkpoint_at=[12])
    other = cache.match(list(range(13)), B)
    assert other.num_tokens == 0 and other.page_ids == () and other.checkpoint_slot is None
    cache.release(other.handle)
    assert cache.block_hashes_of(list(range(8)), A) != cache.block_hashes_of(list(range(8)), B)


def test_pure_attention_matches_at_any_block_end():
    cache, pool, _, _ = make(has_state=False)
    run_sequence(cache, pool, list(range(13)))
    match = cache.match(list(range(11)) + [99, 99], A)
    assert match.num_tokens == 8 and match.checkpoint_slot is None
    cache.release(match.handle)
    pool.decref(match.page_ids)
    with pytest.raises(ValueError, match="has_state"):
        cache.insert(list(range(8)), [0, 1], A, {8: 1000})


def test_full_hit_backs_off_to_an_earlier_checkpoint():
    cache, pool, _, _ = make()
    tokens = list(range(16))
    run_sequence(cache, pool, tokens, checkpoint_at=[8, 16])
    match = cache.match(tokens, A)  # the checkpoint at 16 would leave nothing to compute
    assert match.num_tokens == 8
    cache.release(match.handle)
    pool.decref(match.page_ids)
    match = cache.match(tokens + [1], A)
    assert match.num_tokens == 16
    cache.release(match.handle)
    pool.decref(match.page_ids)
    # Pure attention backs off by one block.
    cache2, pool2, _, _ = make(has_state=False)
    run_sequence(cache2, pool2, tokens)
    assert cache2.cached_prefix_tokens(tokens, A) == 12


def test_events_carry_block_and_checkpoint_hashes():
    cache, pool, _, events = make()
    tokens = list(range(12))
    hashes = block_hashes(tokens, BS, A)
    run_sequence(cache, pool, tokens, checkpoint_at=[8])
    assert [(e.kind, e.block_hashes, e.checkpoint_hashes) for e in events] == [
        ("stored", tuple(hashes), (hashes[1],))
    ]
    events.clear()
    run_sequence(cache, pool, tokens + [5], checkpoint_at=[12])  # an old block gains a checkpoint
    assert [(e.kind, e.block_hashes, e.checkpoint_hashes) for e in events] == [("stored", (), (hashes[2],))]
    events.clear()
    assert cache.evict(100) == 3
    assert events[0].kind == "removed"
    assert set(events[0].block_hashes) == set(hashes)
    assert set(events[0].checkpoint_hashes) == {hashes[1], hashes[2]}
    assert pool.num_free == pool.num_total


def test_duplicate_pages_are_not_adopted_and_duplicate_checkpoints_freed():
    cache, pool, slots, _ = make()
    tokens = list(range(8))
    table_a, table_b = pool.allocate(2), pool.allocate(2)
    cache.insert(tokens, table_a, A, {8: cache.allocate_checkpoint()})
    result = cache.insert(tokens, table_b, A, {8: cache.allocate_checkpoint()})
    assert result.page_ids == tuple(table_a) and result.discarded_checkpoints == 1
    assert [pool.refcount(p) for p in table_b] == [1, 1] and slots.num_free == slots.num_total - 1
    pool.decref(table_a + table_b)
    assert pool.num_free == pool.num_total - 2  # the tree keeps table_a


def test_referenced_and_pinned_blocks_survive_eviction_lru_order():
    cache, pool, _, _ = make()
    for token in (1, 2, 3):
        run_sequence(cache, pool, [token] * 8, checkpoint_at=[8])
    touched = cache.match([1] * 9, A)  # makes [1]*8 more recent than [3]*8
    cache.release(touched.handle)
    pool.decref(touched.page_ids)
    held = cache.match([2] * 9, A)  # referenced and pinned
    assert cache.evict(2) == 2  # the least recently used unreferenced path: [3]*8
    assert cache.cached_prefix_tokens([3] * 9, A) == 0
    assert cache.cached_prefix_tokens([1] * 9, A) == 8
    pool.decref(held.page_ids)
    assert cache.evict(100) == 2  # [2]*8 is still pinned: only [1]*8 goes
    assert cache.cached_prefix_tokens([2] * 9, A) == 8
    cache.release(held.handle)
    assert cache.evict(100) == 2 and cache.num_cached_blocks == 0
    assert cache.evictions == 6 and cache.num_checkpoints == 0


def test_checkpoint_pressure_thins_interior_first_and_respects_pins():
    cache, pool, slots, events = make(checkpoints=2)
    tokens = list(range(12))
    run_sequence(cache, pool, tokens, checkpoint_at=[4, 12])
    events.clear()
    slot = cache.allocate_checkpoint()  # pool empty: the interior checkpoint at 4 goes
    assert slot is not None and cache.checkpoint_evictions == 1
    assert (
        events[0].checkpoint_hashes == (cache.block_hashes_of(tokens, A)[0],) and events[0].block_hashes == ()
    )
    assert cache.num_cached_blocks == 3  # pages stay
    match = cache.match(tokens + [0], A)
    assert match.num_tokens == 12
    assert cache.allocate_checkpoint() is None  # the only checkpoint left is pinned
    cache.release(match.handle)
    pool.decref(match.page_ids)
    cache.free_checkpoint(slot)
    assert cache.allocate_checkpoint() is not None


def test_dead_leaves_without_checkpoints_are_evicted_first():
    cache, pool, _, _ = make()
    run_sequence(cache, pool, [2] * 8)  # no checkpoint: unusable by match on a hybrid model
    run_sequence(cache, pool, [1] * 8, checkpoint_at=[8])  # older than [2]*8 after the touch below
    touched = cache.match_blocks([2] * 8, A)
    assert len(touched) == 2  # match_blocks ignores checkpoints and does not back off
    pool.decref(touched)
    assert cache.evict(2) == 2
    assert cache.match_blocks([2] * 8, A) == []
    assert cache.cached_prefix_tokens([1] * 9, A) == 8


def test_bad_inserts_change_nothing():
    cache, pool, slots, _ = make()
    table = pool.allocate(2)
    slot = cache.allocate_checkpoint()
    for bad in ({5: slot}, {12: slot}, {8: 4242}):
        with pytest.raises(ValueError):
            cache.insert(list(range(8)), table, A, bad)
    with pytest.raises(ValueError, match="page ids"):
        cache.insert(list(range(8)), table[:1], A)
    with pytest.raises(ValueError, match="twice"):
        cache.insert(list(range(8)), [table[0], table[0]], A)
    assert cache.num_cached_blocks == 0 and [pool.refcount(p) for p in table] == [1, 1]
    handle = cache.match([1, 2], A).handle
    cache.release(handle)
    with pytest.raises(ValueError, match="twice"):
        cache.release(handle)


def test_precomputed_hashes_give_the_same_answers():
    cache, pool, _, _ = make()
    tokens = list(range(21))
    hashes = block_hashes(tokens, BS, A)
    table = pool.allocate(6)
    cache.insert(tokens, table, A, {20: cache.allocate_checkpoint()}, hashes=hashes)
    pool.decref(table)
    assert cache.cached_prefix_tokens(tokens, A, hashes=hashes) == cache.cached_prefix_tokens(tokens, A) == 20
    match = cache.match(tokens, A, hashes=hashes)
    assert match.num_tokens == 20
    cache.release(match.handle)
    pool.decref(match.page_ids)
    with pytest.raises(ValueError, match="precomputed"):
        cache.match(tokens, A, hashes=hashes[:2])
