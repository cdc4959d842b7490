"""The paged-attention references on CPU: the loop reference against dense attention over contiguous
K/V (an independent formulation), the vectorized torch path against the loop, and input checks."""

from __future__ import annotations

import pytest
import torch

from engine.ops.paged_attention import (
    paged_attention_decode,
    paged_attention_reference,
    paged_attention_torch,
)

pytestmark = pytest.mark.timeout(60)


def scatter_into_pages(
    keys: list[torch.Tensor], values: list[torch.Tensor], block_size: int, num_pages: int, pad: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write each sequence's K/V `[L, Hkv, D]` into randomly chosen pages of a fresh pool filled with
    noise, the way the runtime would; returns (kv_layer, block_tables, context_lens)."""
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, head_dim = keys[0].shape[1:]
    kv_layer = torch.randn(
        num_pages, 2, block_size, num_kv_heads, head_dim, generator=gen, dtype=keys[0].dtype
    )
    blocks_needed = [-(-len(k) // block_size) for k in keys]
    max_blocks = max(blocks_needed) + 1  # one spare column of padding for every row
    order = torch.randperm(num_pages, generator=gen).tolist()
    block_tables = torch.full((len(keys), max_blocks), pad, dtype=torch.int32)
    for b, (k, v) in enumerate(zip(keys, values, strict=True)):
        for i in range(blocks_needed[b]):
            page = order.pop()
            block_tables[b, i] = page
            chunk = slice(i * block_size, min((i + 1) * block_size, len(k)))
            n = chunk.stop - chunk.start
            kv_layer[page, 0, :n] = k[chunk]
            kv_layer[page, 1, :n] = v[chunk]
    context_lens = torch.tensor([len(k) for k in keys], dtype=torch.int32)
    return kv_layer, block_tables, context_lens


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One sequence, q `[Hq, D]`, k/v `[L, Hkv, D]`, through torch's SDPA with GQA."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, None, :].double(),
        k.transpose(0, 1).double(),
        v.transpose(0, 1).double(),
        scale=scale,
        enable_gqa=True,
    )
    return out[:, 0, :]


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("pad", [-1, 0])
def test_reference_matches_dense_attention(group: int, head_dim: int, pad: int) -> None:
    gen = torch.Generator().manual_seed(group * 1000 + head_dim)
    num_kv_heads, block_size = 2, 16
    lengths = [1, 15, 16, 17, 300]
    keys = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in lengths]
    values = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in lengths]
    q = torch.randn(len(lengths), num_kv_heads * group, head_dim, generator=gen)
    kv_layer, tables, lens = scatter_into_pages(
        keys, values, block_size, num_pages=64, pad=pad, seed=head_dim
    )
    scale = head_dim**-0.5

    out = paged_attention_reference(q, kv_layer, tables, lens, scale)

    for b in range(len(lengths)):
        expected = dense_attention(q[b], keys[b], values[b], scale)
        torch.testing.assert_close(out[b].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_matches_loop_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    group = [1, 2, 4][seed % 3]
    head_dim = [64, 128, 256, 80][seed % 4]
    block_size = [16, 8][seed % 2]
    num_kv_heads = 1 + seed % 2
    lengths = torch.randint(1, 301, (5,), generator=gen).tolist()
    keys = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in lengths]
    values = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in lengths]
    q = torch.randn(len(lengths), num_kv_heads * group, head_dim, generator=gen)
    kv_layer, tables, lens = scatter_into_pages(keys, values, block_size, num_pages=256, pad=-1, seed=seed)

    expected = paged_attention_reference(q, kv_layer, tables, lens, 0.1)
    torch.testing.assert_close(
        paged_attention_torch(q, kv_layer, tables, lens, 0.1), expected, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        paged_attention_decode(q, kv_layer, tables, lens, 0.1), expected, atol=1e-5, rtol=1e-5
    )


def test_bf16_storage_computes_in_fp32_and_returns_bf16() -> None:
    gen = torch.Generator().manual_seed(7)
    lengths = [3, 40, 129]
    keys = [torch.randn(n, 2, 128, generator=gen).bfloat16() for n in lengths]
    values = [torch.randn(n, 2, 128, generator=gen).bfloat16() for n in lengths]
    q = torch.randn(3, 4, 128, generator=gen).bfloat16()
    kv_layer, tables, lens = scatter_into_pages(keys, values, 16, num_pages=32, pad=-1, seed=7)

    out = paged_attention_torch(q, kv_layer, tables, lens, 128**-0.5)

    assert out.dtype == torch.bfloat16
    for b in range(3):
        expected = dense_attention(q[b].float(), keys[b].float(), values[b].float(), 128**-0.5)
        torch.testing.assert_close(out[b].double(), expected, atol=1e-2, rtol=1e-2)


def test_empty_batch_returns_empty() -> None:
    q = torch.randn(0, 4, 64)
    out = paged_attention_torch(q, torch.randn(4, 2, 16, 2, 64), torch.zeros(0, 2, dtype=torch.int32),
                                torch.zeros(0, dtype=torch.int32), 0.125)  # fmt: skip
    assert out.shape == (0, 4, 64)


def valid_inputs() -> dict[str, torch.Tensor | float]:
    return {
        "q": torch.randn(2, 4, 64),
        "kv_layer": torch.randn(8, 2, 16, 2, 64),
        "block_tables": torch.tensor([[0, 1], [2, -1]], dtype=torch.int32),
        "context_lens": torch.tensor([20, 16], dtype=torch.int32),
        "scale": 0.125,
    }


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("q", torch.randn(2, 64), "q must be"),
        ("q", torch.randn(2, 4, 32), "head_dim mismatch"),
        ("q", torch.randn(2, 3, 64), "not a multiple"),
        ("kv_layer", torch.randn(8, 3, 16, 2, 64), "kv_layer must be"),
        ("block_tables", torch.zeros(3, 2, dtype=torch.int32), "block_tables must be"),
        ("block_tables", torch.tensor([[0, 1], [9, -1]], dtype=torch.int32), "outside"),
        ("block_tables", torch.tensor([[0, -1], [2, -1]], dtype=torch.int32), "outside"),
        ("context_lens", torch.tensor([20, 0], dtype=torch.int32), "context_lens must lie"),
        ("context_lens", torch.tensor([33, 1], dtype=torch.int32), "context_lens must lie"),
        ("context_lens", torch.tensor([20.0, 1.0]), "integer"),
    ],
)
def test_bad_inputs_raise_value_error(field: str, bad: torch.Tensor, message: str) -> None:
    inputs = valid_inputs()
    inputs[field] = bad
    for op in (paged_attention_reference, paged_attention_torch, paged_attention_decode):
        with pytest.raises(ValueError, match=message):
            op(**inputs)
