"""Verify-row attention (a sequence's T rows share one gather of its pages) against the per-row
decode op over the same rows, tables and lengths, including a table padded past a sequence's pages."""

from __future__ import annotations

import pytest
import torch

from engine.ops.paged_attention import paged_attention_torch
from engine.ops.paged_attention_verify import paged_attention_verify_torch

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("steps", "heads", "kv_heads"), [(3, 4, 2), (2, 2, 2), (1, 8, 2)])
def test_shared_gather_equals_per_row_attention(steps: int, heads: int, kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(steps * 10 + heads)
    block_size, dim, num_pages = 4, 8, 32
    kv = torch.randn(num_pages, 2, block_size, kv_heads, dim, generator=gen)
    last_lens = [7, 13, 4]  # context of each sequence's last row (a verify starts at position > 0)
    width = max(-(-n // block_size) for n in last_lens) + 1  # one column wider than needed
    perm = torch.randperm(num_pages, generator=gen).tolist()
    tables, lens = [], []
    for s, last in enumerate(last_lens):
        own = perm[s * 8 : s * 8 + 8]
        for t in range(steps):
            n = last - (steps - 1 - t)
            used = -(-n // block_size)
            tables.append(own[:used] + [-1] * (width - used))
            lens.append(n)
    tables_t = torch.tensor(tables, dtype=torch.int32)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    q = torch.randn(len(lens), heads, dim, generator=gen)
    expected = paged_attention_torch(q, kv, tables_t, lens_t, 0.35)
    got = paged_attention_verify_torch(q, kv, tables_t, lens_t, steps, 0.35)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rows_that_do_not_split_into_sequences_raise() -> None:
    kv = torch.zeros(4, 2, 4, 1, 8)
    with pytest.raises(ValueError, match="do not split"):
        paged_attention_verify_torch(
            torch.zeros(5, 1, 8),
            kv,
            torch.zeros(5, 1, dtype=torch.int32),
            torch.ones(5, dtype=torch.int32),
            2,
            1.0,
        )
