"""Naive, chunked and recurrent gated delta rule agree (fp32, <= 1e-5), with and without a state."""

import pytest
import torch
import torch.nn.functional as F

from engine.ops.gdn_chunked import chunk_gated_delta_rule
from engine.ops.gdn_naive import gated_delta_rule
from engine.ops.gdn_recurrent import recurrent_gated_delta_rule, recurrent_gated_delta_rule_steps

pytestmark = pytest.mark.timeout(60)


def random_inputs(batch: int, steps: int, heads: int, k_dim: int, v_dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, steps, heads, k_dim, generator=gen), dim=-1)
    k = F.normalize(torch.randn(batch, steps, heads, k_dim, generator=gen), dim=-1)
    v = torch.randn(batch, steps, heads, v_dim, generator=gen)
    # Realistic decays: some heads forget fast (g ~ -5), some almost never (g ~ -0.01).
    g = -torch.exp(torch.randn(batch, steps, heads, generator=gen) * 2 - 1)
    beta = torch.sigmoid(torch.randn(batch, steps, heads, generator=gen))
    state = torch.randn(batch, heads, k_dim, v_dim, generator=gen) * 0.5
    return q, k, v, g, beta, state


@pytest.mark.parametrize("steps", [1, 5, 64, 130])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_and_recurrent_match_naive(steps: int, with_state: bool) -> None:
    q, k, v, g, beta, state = random_inputs(2, steps, 3, 16, 8, seed=steps)
    init = state if with_state else None
    ref_out, ref_state = gated_delta_rule(q, k, v, g, beta, init)
    for op in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        out, final = op(q, k, v, g, beta, init)
        assert out.shape == ref_out.shape and final.shape == ref_state.shape
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
        torch.testing.assert_close(final, ref_state, atol=1e-5, rtol=0)


def test_state_carries_across_calls() -> None:
    """Splitting a sequence and carrying the state equals processing it whole."""
    q, k, v, g, beta, _ = random_inputs(1, 100, 2, 16, 16, seed=7)
    whole, whole_state = chunk_gated_delta_rule(q, k, v, g, beta)
    first, mid = chunk_gated_delta_rule(q[:, :37], k[:, :37], v[:, :37], g[:, :37], beta[:, :37])
    second, end = recurrent_gated_delta_rule(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], beta[:, 37:], mid)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, whole_state, atol=5e-5, rtol=0)  # 100 steps of fp32 accumulation


def test_inputs_are_not_modified() -> None:
    q, k, v, g, beta, state = random_inputs(1, 3, 1, 4, 4, seed=1)
    before = state.clone()
    recurrent_gated_delta_rule(q, k, v, g, beta, state)
    chunk_gated_delta_rule(q, k, v, g, beta, state)
    assert torch.equal(state, before)


def test_per_step_states_match_naive_prefixes() -> None:
    """The speculative verify keeps the state after every step: step t equals the naive state after
    t + 1 tokens, and the outputs equal the plain recurrence's."""
    q, k, v, g, beta, state = random_inputs(2, 4, 3, 16, 8, seed=11)
    out, states = recurrent_gated_delta_rule_steps(q, k, v, g, beta, state)
    assert states.shape == (2, 4, 3, 16, 8)
    torch.testing.assert_close(out, gated_delta_rule(q, k, v, g, beta, state)[0], atol=1e-5, rtol=0)
    for t in range(4):
        _, ref = gated_delta_rule(
            q[:, : t + 1], k[:, : t + 1], v[:, : t + 1], g[:, : t + 1], beta[:, : t + 1], state
        )
        torch.testing.assert_close(states[:, t], ref, atol=1e-5, rtol=0)
