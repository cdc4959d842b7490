"""Paged extend (chunked prefill with a cached prefix) under TRITON_INTERPRET=1 against the torch
reference, and the reference against decode attention row by row (an independent formulation)."""

from __future__ import annotations

import pytest
import torch

from engine.ops.paged_attention import paged_attention_reference
from engine.ops.paged_extend import paged_extend_reference
from engine.ops.triton.paged_extend import paged_extend_triton
from tests.engine.test_paged_attention import scatter_into_pages

pytestmark = pytest.mark.timeout(120)


def extend_batch(prefixes: list[int], chunks: list[int], group: int, head_dim: int, dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, block_size = 2, 16
    contexts = [p + c for p, c in zip(prefixes, chunks, strict=True)]
    keys = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in contexts]
    values = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in contexts]
    num_pages = sum(-(-n // block_size) for n in contexts) + 4
    kv_layer, tables, _ = scatter_into_pages(keys, values, block_size, num_pages, pad=-1, seed=seed)
    q = torch.randn(sum(chunks), num_kv_heads * group, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0, *torch.tensor(chunks).cumsum(0).tolist()], dtype=torch.int32)
    return q, kv_layer, tables, cu, torch.tensor(prefixes, dtype=torch.int32)


def test_reference_rows_equal_decode_attention_at_their_positions() -> None:
    q, kv_layer, tables, cu, start = extend_batch(
        [5, 0], [7, 3], group=2, head_dim=32, dtype=torch.float32, seed=0
    )
    out = paged_extend_reference(q, kv_layer, tables, cu, start, 0.2)
    rows = [(s, int(start[s]) + t + 1) for s in range(2) for t in range(int(cu[s + 1] - cu[s]))]
    row_tables = tables[[s for s, _ in rows]]
    lens = torch.tensor([n for _, n in rows], dtype=torch.int32)

    expected = paged_attention_reference(q, kv_layer, row_tables, lens, 0.2)

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize(("group", "head_dim"), [(1, 64), (4, 80)])
def test_kernel_matches_reference(group: int, head_dim: int) -> None:
    """A cached prefix that ends mid-page, a fresh sequence, a chunk longer than one query tile."""
    prefixes, chunks = [21, 0, 40], [9, 5, 70]
    q, kv_layer, tables, cu, start = extend_batch(
        prefixes, chunks, group, head_dim, torch.float32, seed=group
    )

    out = paged_extend_triton(q, kv_layer, tables, cu, start, head_dim**-0.5, max_chunk_len=max(chunks))

    expected = paged_extend_reference(q, kv_layer, tables, cu, start, head_dim**-0.5)
    assert (out - expected).abs().max().item() <= 1e-4


@pytest.mark.triton
def test_kernel_bf16() -> None:
    q, kv_layer, tables, cu, start = extend_batch([17], [20], 2, 64, torch.bfloat16, seed=3)

    out = paged_extend_triton(q, kv_layer, tables, cu, start, 0.125, max_chunk_len=20)

    expected = paged_extend_reference(q, kv_layer, tables, cu, start, 0.125)
    torch.testing.assert_close(out.float(), expected.float(), atol=3e-2, rtol=3e-2)
