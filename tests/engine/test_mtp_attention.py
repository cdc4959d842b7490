"""The MTP head's batched cached attention (every drafting sequence in one call) against the
per-sequence form it replaced: same outputs, same cache contents, for catch-up groups of different
lengths and for one-row draft steps, with caches that start at different positions (GQA)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.models.mtp import MtpKv
from engine.models.mtp_attention import (
    CachedGroup,
    StackedCaches,
    cached_attention,
    cached_attention_reference,
)

pytestmark = pytest.mark.timeout(60)

HEADS, KV_HEADS, DIM, LAYERS = 4, 2, 8, 2


def _caches(valid_from: list[int], filled: list[int], seed: int) -> list[MtpKv]:
    """One MtpKv per sequence, entries [valid_from, valid_from + filled) holding earlier K/V."""
    cfg = SimpleNamespace(mtp_num_hidden_layers=LAYERS, num_key_value_heads=KV_HEADS, head_dim=DIM)
    gen = torch.Generator().manual_seed(seed)
    caches = []
    for start, n in zip(valid_from, filled, strict=True):
        kv = MtpKv(cfg, start, torch.float32, torch.device("cpu"))
        kv.data[:, :n] = torch.randn(kv.data[:, :n].shape, generator=gen)
        caches.append(kv)
    return caches


def _clone(caches: list[MtpKv]) -> list[MtpKv]:
    copies = []
    for kv in caches:
        copy = object.__new__(MtpKv)
        copy.__dict__.update(kv.__dict__)
        copy.data = kv.data.clone()
        copies.append(copy)
    return copies


@pytest.mark.parametrize("counts", [[3, 1, 2], [1, 1, 1], [2]])
def test_batched_cached_attention_equals_per_sequence(counts: list[int]) -> None:
    valid_from, filled = [0, 5, 17][: len(counts)], [9, 3, 30][: len(counts)]
    caches = _caches(valid_from, filled, seed=len(counts))
    reference_caches = _clone(caches)
    gen = torch.Generator().manual_seed(7)
    rows = sum(counts)
    q = torch.randn(rows, HEADS, DIM, generator=gen)
    k = torch.randn(rows, KV_HEADS, DIM, generator=gen)
    v = torch.randn(rows, KV_HEADS, DIM, generator=gen)

    def groups(kvs: list[MtpKv]) -> list[CachedGroup]:
        out, row = [], 0
        for kv, start, n, count in zip(kvs, valid_from, filled, counts, strict=False):
            out.append(CachedGroup(kv, row, row + count, start + n))  # the rows follow the cache
            row += count
        return out

    for layer in range(LAYERS):
        got = cached_attention(layer, q, k, v, groups(caches), scale=DIM**-0.5)
        expected = cached_attention_reference(layer, q, k, v, groups(reference_caches), scale=DIM**-0.5)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for kv, ref in zip(caches, reference_caches, strict=True):
        torch.testing.assert_close(kv.data, ref.data, atol=0, rtol=0)


def test_rows_overwrite_stale_entries_and_see_only_earlier_ones() -> None:
    """A group rewrites entries past its first position (rejected drafts): the stale values must
    not leak into the output, and a query must not see entries after its own position."""
    caches = _caches([0], [12], seed=1)
    reference = _clone(caches)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, h, DIM, generator=gen) for h in (HEADS, KV_HEADS, KV_HEADS))
    got = cached_attention(0, q, k, v, [CachedGroup(caches[0], 0, 2, 6)], scale=0.3)
    expected = cached_attention_reference(0, q, k, v, [CachedGroup(reference[0], 0, 2, 6)], scale=0.3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_kept_stack_across_calls_equals_per_sequence() -> None:
    """Calls sharing a `StackedCaches`: the same sequences (the stack is reused), a cache that
    grows past its capacity and a changed set of sequences (rebuilt) — outputs and every cache's
    contents as the per-sequence form's after each call."""
    caches = _caches([0, 5, 17], [9, 3, 30], seed=3)
    reference = _clone(caches)
    stacked = StackedCaches()
    gen = torch.Generator().manual_seed(4)
    ends = [9, 8, 47]  # next position of each sequence
    rounds = [([0, 1, 2], [2, 1, 3]), ([0, 1, 2], [1, 1, 1]), ([0, 1, 2], [40, 1, 1]), ([2, 0], [1, 2])]
    for members, counts in rounds:
        rows = sum(counts)
        q = torch.randn(rows, HEADS, DIM, generator=gen)
        k = torch.randn(rows, KV_HEADS, DIM, generator=gen)
        v = torch.randn(rows, KV_HEADS, DIM, generator=gen)
        got_groups, ref_groups, row = [], [], 0
        for m, count in zip(members, counts, strict=True):
            for kv in (caches[m], reference[m]):
                kv.ensure(ends[m] + count)
            got_groups.append(CachedGroup(caches[m], row, row + count, ends[m]))
            ref_groups.append(CachedGroup(reference[m], row, row + count, ends[m]))
            row += count
            ends[m] += count
        for layer in range(LAYERS):
            got = cached_attention(layer, q, k, v, got_groups, DIM**-0.5, stacked)
            expected = cached_attention_reference(layer, q, k, v, ref_groups, DIM**-0.5)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        for kv, ref in zip(caches, reference, strict=True):
            used = ref.data.shape[1]
            torch.testing.assert_close(kv.data[:, :used], ref.data, atol=0, rtol=0)


@pytest.mark.parametrize("counts", [[3, 1, 2], [2, 2, 2], [4]])
def test_last_rows_only_equal_the_full_calls_last_rows(counts: list[int]) -> None:
    """`last_only`: queries for each group's last row alone give the full call's last rows, and
    every row's K/V lands in the caches as in the full call."""
    valid_from, filled = [0, 5, 17][: len(counts)], [9, 3, 30][: len(counts)]
    caches = _caches(valid_from, filled, seed=5)
    reference = _clone(caches)
    gen = torch.Generator().manual_seed(6)
    rows = sum(counts)
    q, k, v = (torch.randn(rows, h, DIM, generator=gen) for h in (HEADS, KV_HEADS, KV_HEADS))
    ends = torch.tensor(counts).cumsum(0) - 1

    def groups(kvs: list[MtpKv]) -> list[CachedGroup]:
        out, row = [], 0
        for kv, start, n, count in zip(kvs, valid_from, filled, counts, strict=False):
            out.append(CachedGroup(kv, row, row + count, start + n))
            row += count
        return out

    stacked = StackedCaches()
    for layer in range(LAYERS):
        got = cached_attention(layer, q[ends], k, v, groups(caches), DIM**-0.5, stacked, last_only=True)
        expected = cached_attention_reference(layer, q, k, v, groups(reference), DIM**-0.5)[ends]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for kv, ref in zip(caches, reference, strict=True):
        torch.testing.assert_close(kv.data[:, : ref.data.shape[1]], ref.data, atol=0, rtol=0)
