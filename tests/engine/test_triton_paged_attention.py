"""The split-K Triton paged decode attention kernels, run on CPU under TRITON_INTERPRET=1 (set by
tests/conftest.py), against the torch loop reference."""

from __future__ import annotations

import pytest
import torch

from engine.ops.paged_attention import paged_attention_reference
from engine.ops.triton.paged_attention_splitk import paged_attention_splitk, plan_num_splits
from tests.engine.test_paged_attention import scatter_into_pages

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]


def random_batch(group: int, head_dim: int, lengths: list[int], dtype: torch.dtype, seed: int, pad: int = -1):
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, block_size = 2 if group == 1 else 1, 16
    keys = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in lengths]
    values = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in lengths]
    q = torch.randn(len(lengths), num_kv_heads * group, head_dim, generator=gen).to(dtype)
    num_pages = sum(-(-n // block_size) for n in lengths) + 8
    kv_layer, tables, lens = scatter_into_pages(keys, values, block_size, num_pages, pad=pad, seed=seed)
    return q, kv_layer, tables, lens


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_kernel_matches_reference(group: int, head_dim: int) -> None:
    gen = torch.Generator().manual_seed(group + head_dim)
    # Edges (a lone token, exactly one page, one past a page, the longest) plus random lengths.
    lengths = [1, 16, 17, 300] + torch.randint(2, 300, (2,), generator=gen).tolist()
    q, kv_layer, tables, lens = random_batch(group, head_dim, lengths, torch.float32, seed=head_dim * group)
    scale = head_dim**-0.5

    out = paged_attention_splitk(q, kv_layer, tables, lens, scale)

    expected = paged_attention_reference(q, kv_layer, tables, lens, scale)
    assert (out - expected).abs().max().item() <= 1e-4


def test_kernel_handles_odd_head_dim_zero_padding_and_odd_block_size() -> None:
    gen = torch.Generator().manual_seed(3)
    head_dim, block_size, lengths = 80, 12, [5, 12, 13, 50]
    keys = [torch.randn(n, 2, head_dim, generator=gen) for n in lengths]
    values = [torch.randn(n, 2, head_dim, generator=gen) for n in lengths]
    q = torch.randn(len(lengths), 4, head_dim, generator=gen)
    kv_layer, tables, lens = scatter_into_pages(keys, values, block_size, num_pages=24, pad=0, seed=3)

    out = paged_attention_splitk(q, kv_layer, tables, lens, 0.3)

    assert (out - paged_attention_reference(q, kv_layer, tables, lens, 0.3)).abs().max().item() <= 1e-4


def test_kernel_bf16_storage_returns_bf16_close_to_reference() -> None:
    q, kv_layer, tables, lens = random_batch(2, 128, [7, 100], torch.bfloat16, seed=11)

    out = paged_attention_splitk(q, kv_layer, tables, lens, 128**-0.5)

    assert out.dtype == torch.bfloat16
    expected = paged_attention_reference(q, kv_layer, tables, lens, 128**-0.5)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_kernel_reads_a_strided_layer_view_of_the_cache() -> None:
    """The runtime passes `kv[layer]` of the whole cache; a view of a bigger tensor must work."""
    q, kv_layer, tables, lens = random_batch(2, 64, [33, 9], torch.float32, seed=5)
    cache = torch.stack([torch.randn_like(kv_layer), kv_layer, torch.randn_like(kv_layer)])

    out = paged_attention_splitk(q, cache[1], tables, lens, 0.125)

    assert (out - paged_attention_reference(q, kv_layer, tables, lens, 0.125)).abs().max().item() <= 1e-4


def test_kernel_rejects_misshapen_input() -> None:
    q, kv_layer, tables, lens = random_batch(1, 64, [3], torch.float32, seed=1)  # Hq = Hkv = 2
    with pytest.raises(ValueError, match="not a multiple"):
        paged_attention_splitk(q[:, :1].expand(1, 3, 64).contiguous(), kv_layer, tables, lens, 1.0)
    with pytest.raises(ValueError, match="context_lens must be"):
        paged_attention_splitk(q, kv_layer, tables, lens.repeat(2), 1.0)


@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_splits_agree_with_reference_on_ragged_gqa_batch(num_splits: int) -> None:
    """Group of 8 query heads per kv head (the 80B slice's 16/2), lengths so ragged that some
    splits of the short sequences hold no token at all."""
    q, kv_layer, tables, lens = random_batch(8, 64, [1, 40, 129, 250], torch.float32, seed=num_splits)

    out = paged_attention_splitk(q, kv_layer, tables, lens, 0.125, num_splits=num_splits)

    expected = paged_attention_reference(q, kv_layer, tables, lens, 0.125)
    assert (out - expected).abs().max().item() <= 1e-4


def test_planned_splits_fill_the_device_and_use_shapes_only() -> None:
    assert plan_num_splits(batch=1, num_kv_heads=2, max_context=8192) == 64
    assert plan_num_splits(batch=64, num_kv_heads=2, max_context=8192) == 4
    assert plan_num_splits(batch=1, num_kv_heads=2, max_context=20) == 1  # never more than one tile
