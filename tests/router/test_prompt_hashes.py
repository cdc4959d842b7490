"""Incremental per-session hashing equals hashing the whole prompt, whatever the session does."""

from __future__ import annotations

import random

from engine.cache.hashing import block_hashes, cache_extra
from router.prompt_hashes import PromptHasher


def test_incremental_hashes_equal_full_hashes_over_a_session():
    rng = random.Random(0)
    hasher = PromptHasher(block_size=16)
    extra = cache_extra("m", "tenant-a")
    prompt: list[int] = []
    for _turn in range(8):
        prompt = prompt + [rng.randrange(1000) for _ in range(rng.randint(1, 90))]
        assert hasher.hashes(prompt, extra, "s1") == block_hashes(prompt, 16, extra=extra)
    assert hasher.reused_blocks > 0


def test_diverged_prompt_other_tenant_and_no_session_are_hashed_from_scratch():
    hasher = PromptHasher(block_size=16)
    a, b = cache_extra("m", "a"), cache_extra("m", "b")
    prompt = list(range(100))
    hasher.hashes(prompt, a, "s")
    edited = [7] + prompt[1:] + [1, 2, 3]
    assert hasher.hashes(edited, a, "s") == block_hashes(edited, 16, extra=a)
    assert hasher.hashes(prompt, b, "s") == block_hashes(prompt, 16, extra=b)
    assert hasher.hashes(prompt, a, "") == block_hashes(prompt, 16, extra=a)
    shorter = prompt[:40]
    assert hasher.hashes(shorter, a, "s") == block_hashes(shorter, 16, extra=a)
