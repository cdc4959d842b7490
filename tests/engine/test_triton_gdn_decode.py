"""The Triton Gated DeltaNet decode step, run on CPU under TRITON_INTERPRET=1 (tests/conftest.py),
against an inline statement of the recurrence and the token-by-token reference `gdn_naive`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.ops.gdn_naive import gated_delta_rule
from engine.ops.triton.gdn_decode import gdn_decode_step

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]


def step_inputs(batch: int, heads_qk: int, heads_v: int, dim_k: int, dim_v: int, seed: int, steps: int = 1):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, steps, heads_qk, dim_k, generator=gen), dim=-1)
    k = F.normalize(torch.randn(batch, steps, heads_qk, dim_k, generator=gen), dim=-1)
    v = torch.randn(batch, steps, heads_v, dim_v, generator=gen)
    g = -torch.rand(batch, steps, heads_v, generator=gen) * 2  # log-decay, as softplus gives: <= 0
    beta = torch.rand(batch, steps, heads_v, generator=gen)
    state = torch.randn(batch, heads_v, dim_k, dim_v, generator=gen)
    return q, k, v, g, beta, state


def inline_step(q, k, v, g, beta, state):
    """The recurrence as written in the issue, for q/k/v `[B, 1, H, D]` with q/k heads = v heads."""
    q, k, v = q[:, 0].double() * q.shape[-1] ** -0.5, k[:, 0].double(), v[:, 0].double()
    state = state.double() * g[:, 0].double().exp()[..., None, None]
    kv_mem = (state * k[..., None]).sum(-2)
    delta = (v - kv_mem) * beta[:, 0].double()[..., None]
    state = state + k[..., None] * delta[..., None, :]
    return (state * q[..., None]).sum(-2)[:, None], state


@pytest.mark.parametrize(("dim_k", "dim_v"), [(128, 128), (64, 96), (80, 256)])
def test_step_matches_inline_recurrence(dim_k: int, dim_v: int) -> None:
    q, k, v, g, beta, state = step_inputs(3, 4, 4, dim_k, dim_v, seed=dim_k + dim_v)
    original_state = state.clone()

    out, final_state = gdn_decode_step(q, k, v, g, beta, state)

    expected_out, expected_state = inline_step(q, k, v, g, beta, state)
    assert (out.double() - expected_out).abs().max().item() <= 1e-5
    assert (final_state.double() - expected_state).abs().max().item() <= 1e-5
    assert torch.equal(state, original_state), "initial_state must not be modified"


@pytest.mark.parametrize(("heads_qk", "heads_v"), [(4, 4), (2, 4)])
@pytest.mark.parametrize("with_state", [True, False])
def test_step_matches_gdn_naive(heads_qk: int, heads_v: int, with_state: bool) -> None:
    q, k, v, g, beta, state = step_inputs(2, heads_qk, heads_v, 128, 128, seed=heads_qk * 10 + with_state)
    initial = state if with_state else None

    out, final_state = gdn_decode_step(q, k, v, g, beta, initial)

    ratio = heads_v // heads_qk
    q_rep, k_rep = q.repeat_interleave(ratio, dim=2), k.repeat_interleave(ratio, dim=2)
    expected_out, expected_state = gated_delta_rule(q_rep, k_rep, v, g, beta, initial)
    assert out.shape == expected_out.shape and out.dtype == expected_out.dtype
    assert (out - expected_out).abs().max().item() <= 1e-5
    assert (final_state - expected_state).abs().max().item() <= 1e-5


def test_repeated_steps_equal_naive_over_the_whole_sequence() -> None:
    q, k, v, g, beta, state = step_inputs(2, 2, 2, 64, 64, seed=9, steps=5)
    expected_out, expected_state = gated_delta_rule(q, k, v, g, beta, state)

    outs = []
    for t in range(5):
        token = slice(t, t + 1)
        out, state = gdn_decode_step(
            q[:, token], k[:, token], v[:, token], g[:, token], beta[:, token], state
        )
        outs.append(out)

    assert (torch.cat(outs, dim=1) - expected_out).abs().max().item() <= 1e-5
    assert (state - expected_state).abs().max().item() <= 1e-5


def test_pool_mode_updates_only_the_given_slots_in_place() -> None:
    q, k, v, g, beta, _ = step_inputs(3, 2, 4, 64, 128, seed=4)
    # The runtime passes `ssm[layer]`, a view into the cache of every layer.
    cache = torch.randn(2, 6, 4, 64, 128, generator=torch.Generator().manual_seed(4))
    pool = cache[1]
    before, other_layer = pool.clone(), cache[0].clone()
    slots = torch.tensor([5, 0, 3], dtype=torch.int32)

    out, returned = gdn_decode_step(q, k, v, g, beta, state_slots=slots, state_pool=pool)

    assert returned is pool
    expected_out, expected_state = gated_delta_rule(
        q.repeat_interleave(2, dim=2), k.repeat_interleave(2, dim=2), v, g, beta, before[slots.long()]
    )
    assert (out - expected_out).abs().max().item() <= 1e-5
    assert (pool[slots.long()] - expected_state).abs().max().item() <= 1e-5
    untouched = [1, 2, 4]
    assert torch.equal(pool[untouched], before[untouched])
    assert torch.equal(cache[0], other_layer)


def test_bf16_inputs_give_bf16_output_and_fp32_state() -> None:
    q, k, v, g, beta, state = step_inputs(2, 2, 2, 64, 64, seed=2)
    as_bf16 = [t.bfloat16() for t in (q, k, v, g, beta)]

    out, final_state = gdn_decode_step(*as_bf16, state)

    assert out.dtype == torch.bfloat16 and final_state.dtype == torch.float32
    expected_out, expected_state = inline_step(*[t.float() for t in as_bf16], state)
    torch.testing.assert_close(out.double(), expected_out, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(final_state.double(), expected_state, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_value_error() -> None:
    q, k, v, g, beta, state = step_inputs(2, 2, 2, 64, 64, seed=1, steps=2)
    with pytest.raises(ValueError, match="T = 2"):
        gdn_decode_step(q, k, v, g, beta, state)
    one = slice(0, 1)
    q, k, v, g, beta = q[:, one], k[:, one], v[:, one], g[:, one], beta[:, one]
    with pytest.raises(ValueError, match="initial_state must be"):
        gdn_decode_step(q, k, v, g, beta, state[:1])
    with pytest.raises(ValueError, match="beta must be"):
        gdn_decode_step(q, k, v, g, beta[:, :, :1], state)
    pool = torch.zeros(4, 2, 64, 64)
    with pytest.raises(ValueError, match="together"):
        gdn_decode_step(q, k, v, g, beta, state_pool=pool)
    with pytest.raises(ValueError, match="distinct"):
        gdn_decode_step(q, k, v, g, beta, state_slots=torch.tensor([1, 1]), state_pool=pool)
    with pytest.raises(ValueError, match="out of range"):
        gdn_decode_step(q, k, v, g, beta, state_slots=torch.tensor([0, 4]), state_pool=pool)
    with pytest.raises(ValueError, match="fp32"):
        gdn_decode_step(q, k, v, g, beta, state_slots=torch.tensor([0, 1]), state_pool=pool.double())
