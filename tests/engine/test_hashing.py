import random
import subprocess
import sys
import time

import pytest

from engine.cache.events import KvEvent
from engine.cache.hashing import HASH_VERSION, block_hashes, cache_extra

pytestmark = pytest.mark.timeout(60)

EXTRA = cache_extra("baton-test", "tenant-a")
# Computed once with HASH_VERSION 1 and pinned: a change here breaks every index and every peer.
PINNED = (0x33054549295DDFAF, 0xE19FB26666D2B8AB)


def test_pinned_values_are_stable():
    assert HASH_VERSION == 1
    assert [hex(h) for h in block_hashes(list(range(32)), 16, EXTRA)] == [hex(h) for h in PINNED]


def test_same_in_a_fresh_process():
    # Python's hash() is salted per process; ours must not be.
    code = (
        "from engine.cache.hashing import block_hashes, cache_extra;"
        "print(block_hashes(list(range(48)), 16, cache_extra('m', 't')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(block_hashes(list(range(48)), 16, cache_extra("m", "t")))


def test_one_unsigned_64_bit_hash_per_full_block_partial_ignored():
    tokens = list(range(50))
    hashes = block_hashes(tokens, 16)
    assert len(hashes) == 3
    assert all(0 <= h < 2**64 for h in hashes)
    assert block_hashes(tokens[:48], 16) == hashes
    assert block_hashes(tokens[:15], 16) == []


def test_chained_a_change_in_an_early_block_changes_every_later_hash():
    tokens = list(range(64))
    changed = list(tokens)
    changed[3] = 999
    a, b = block_hashes(tokens, 16), block_hashes(changed, 16)
    assert all(x != y for x, y in zip(a, b, strict=True))
    changed = list(tokens)
    changed[40] = 999
    b = block_hashes(changed, 16)
    assert a[:2] == b[:2] and a[2] != b[2] and a[3] != b[3]


def test_same_block_at_different_positions_hashes_differently():
    block = [7] * 16
    hashes = block_hashes(block * 3, 16)
    assert len(set(hashes)) == 3


def test_parent_extends_a_prefix():
    tokens = [random.Random(0).randrange(150_000) for _ in range(16 * 10 + 5)]
    whole = block_hashes(tokens, 16, EXTRA)
    head = block_hashes(tokens[:64], 16, EXTRA)
    assert block_hashes(tokens[64:], 16, EXTRA, parent=head[-1]) == whole[4:]


def test_extra_separates_namespaces():
    tokens = list(range(32))
    a = block_hashes(tokens, 16, cache_extra("m", "tenant-a"))
    b = block_hashes(tokens, 16, cache_extra("m", "tenant-b"))
    c = block_hashes(tokens, 16, cache_extra("m", "tenant-a", adapter="lora1"))
    d = block_hashes(tokens, 16, cache_extra("m2", "tenant-a"))
    e = block_hashes(tokens, 16)
    assert len({tuple(x) for x in (a, b, c, d, e)}) == 5
    # Length prefixes: moving a character between fields gives a different namespace.
    assert cache_extra("ab", "c") != cache_extra("a", "bc")


def test_bad_input_raises_clearly():
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2], 0)
    with pytest.raises(ValueError, match="int32"):
        block_hashes([2**40] * 16, 16)
    with pytest.raises(TypeError):
        block_hashes([1.5] * 16, 16)
    with pytest.raises(TypeError):
        block_hashes([1] * 16, 16, extra="str")
    with pytest.raises(ValueError, match="parent"):
        block_hashes([1] * 16, 16, parent=-1)
    with pytest.raises(TypeError):
        cache_extra("m", None)


def test_speed_128k_tokens():
    tokens = list(range(131072))
    block_hashes(tokens, 16, EXTRA)
    start = time.perf_counter()
    hashes = block_hashes(tokens, 16, EXTRA)
    elapsed = time.perf_counter() - start
    assert len(hashes) == 8192
    assert elapsed < 0.1, f"8K blocks took {elapsed * 1e3:.1f} ms"  # ~10 ms on 2 slow cores


def test_kv_event_is_frozen_and_checked():
    event = KvEvent("stored", (1, 2), (2,))
    with pytest.raises(AttributeError):
        event.kind = "removed"
    with pytest.raises(ValueError):
        KvEvent("evicted", (), ())
