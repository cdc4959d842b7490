"""The chunked GDN prefill Triton kernel under TRITON_INTERPRET=1 against the token-by-token
reference (`gdn_naive`) and the torch chunked form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.ops.gdn_chunked import chunk_gated_delta_rule
from engine.ops.gdn_naive import gated_delta_rule
from engine.ops.triton.gdn_chunked import chunk_gated_delta_rule_triton

pytestmark = [pytest.mark.triton, pytest.mark.timeout(180)]


def gdn_inputs(batch: int, steps: int, heads: int, dim_k: int, dim_v: int, seed: int, with_state: bool):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, steps, heads, dim_k, generator=gen), dim=-1)
    k = F.normalize(0.9 * q + 0.4 * torch.randn(batch, steps, heads, dim_k, generator=gen), dim=-1)
    v = torch.randn(batch, steps, heads, dim_v, generator=gen)
    g = -torch.rand(batch, steps, heads, generator=gen) * 0.5
    beta = torch.rand(batch, steps, heads, generator=gen)
    state = torch.randn(batch, heads, dim_k, dim_v, generator=gen) * 0.3 if with_state else None
    return q, k, v, g, beta, state


@pytest.mark.parametrize("with_state", [False, True])
def test_kernel_matches_naive_and_chunked_references(with_state: bool) -> None:
    """Chunks of 16 over T = 40: two full chunks and a partial one; Dv = 48: a full and a partial
    Dv tile; two sequences (batch stride) or two heads (head stride)."""
    batch, heads = (2, 1) if with_state else (1, 2)
    args = gdn_inputs(batch, 40, heads, 32, 48, seed=int(with_state), with_state=with_state)

    out, state = chunk_gated_delta_rule_triton(*args, chunk_size=16)

    naive_out, naive_state = gated_delta_rule(*args)
    chunked_out, _ = chunk_gated_delta_rule(*args)
    torch.testing.assert_close(out, naive_out, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(state, naive_state, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out, chunked_out, atol=2e-4, rtol=1e-4)


def test_kernel_leaves_initial_state_untouched_and_keeps_v_dtype() -> None:
    q, k, v, g, beta, state = gdn_inputs(1, 9, 1, 16, 16, seed=5, with_state=True)
    before = state.clone()

    out, _ = chunk_gated_delta_rule_triton(q, k, v.bfloat16(), g, beta, state, chunk_size=16)

    assert torch.equal(state, before) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gated_delta_rule_triton(q, k, v, g, beta, state, chunk_size=24)


def test_default_chunk_of_64_matches_reference() -> None:
    """The GPU's chunk size, once (slow under the interpreter: 63 substitution steps per chunk)."""
    args = gdn_inputs(1, 70, 1, 16, 16, seed=7, with_state=True)

    out, state = chunk_gated_delta_rule_triton(*args)

    naive_out, naive_state = gated_delta_rule(*args)
    torch.testing.assert_close(out, naive_out, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(state, naive_state, atol=2e-4, rtol=1e-4)
