"""Triton causal conv1d (varlen prefill over state slots, decode update) against engine/ops/conv.py,
under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch

from engine.ops.conv import causal_conv1d_prefill, causal_conv1d_step
from engine.ops.triton.causal_conv1d import causal_conv1d_update, causal_conv1d_varlen

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]

CHANNELS, KERNEL = 80, 4  # 80: a partial channel tile


def test_varlen_prefill_matches_reference_with_and_without_initial_state() -> None:
    """Chunks of 1 and 2 tokens (shorter than K - 1: the new state mixes old state and input),
    one spanning several row tiles, a fresh one; slots in a shuffled order."""
    gen = torch.Generator().manual_seed(0)
    lengths, slots, has_state = [1, 2, 45, 7], [3, 0, 5, 2], [True, True, True, False]
    x = torch.randn(sum(lengths), CHANNELS, generator=gen)
    weight = torch.randn(CHANNELS, KERNEL, generator=gen)
    pool = torch.randn(6, CHANNELS, KERNEL - 1, generator=gen)
    expected_pool = pool.clone()
    expected = []
    start = 0
    for n, slot, init in zip(lengths, slots, has_state, strict=True):
        state = pool[slot] if init else torch.zeros(CHANNELS, KERNEL - 1)
        out, new_state = causal_conv1d_prefill(x[start : start + n], state, weight)
        expected.append(out)
        expected_pool[slot] = new_state
        start += n
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])

    out = causal_conv1d_varlen(x, weight, pool, cu, torch.tensor(slots), torch.tensor(has_state))

    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool, expected_pool, atol=0, rtol=0)


def test_decode_update_matches_reference_and_shifts_slots_in_place() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, CHANNELS, generator=gen)
    weight = torch.randn(CHANNELS, KERNEL, generator=gen)
    pool = torch.randn(5, CHANNELS, KERNEL - 1, generator=gen)
    slots = torch.tensor([4, 1, 2])
    expected, expected_state = causal_conv1d_step(x, pool[slots], weight)
    untouched = pool[[0, 3]].clone()

    out = causal_conv1d_update(x, weight, pool, slots)

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool[slots], expected_state, atol=0, rtol=0)
    assert torch.equal(pool[[0, 3]], untouched)


def test_bf16_storage() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, CHANNELS, generator=gen).bfloat16()
    weight = torch.randn(CHANNELS, KERNEL, generator=gen).bfloat16()
    pool = torch.randn(2, CHANNELS, KERNEL - 1, generator=gen).bfloat16()
    expected, expected_state = causal_conv1d_prefill(x.float(), pool[1].float(), weight.float())

    out = causal_conv1d_varlen(x, weight, pool, torch.tensor([0, 9]), torch.tensor([1]), torch.tensor([True]))

    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(pool[1].float(), expected_state, atol=0, rtol=0)


def test_misshapen_input_is_refused() -> None:
    x, weight, pool = torch.zeros(2, 8), torch.zeros(8, 4), torch.zeros(2, 8, 2)
    with pytest.raises(ValueError, match="conv_pool"):
        causal_conv1d_update(x, weight, pool, torch.tensor([0, 1]))
