"""Gated delta rule as a recurrence vectorised over batch and heads: the decode path (T = 1).

Same math and signature as `gdn_naive.gated_delta_rule`; loops only over time, so it is the form
for one new token per sequence (and the T = k + 1 rows of a speculative verify). See the naive
module for the update rule and shapes.

At decode sizes every op costs its dispatch more than its arithmetic, so the loop runs on
time-major operands (step t's q and k are contiguous [B, H, Dk] blocks, no per-step copies),
writes each step's state straight into its slot of the kept states, forms the outer product
k err^T by broadcasting, and computes every step's output in one batched matmul after the loop. A
decode (T = 1) and each row of a verify run the very same ops on the same values, so speculation
reproduces plain decoding bit for bit.
"""

from __future__ import annotations

import torch


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if q.shape[1] == 1:  # decode: the one kept state is the final one
        out, states = _recurrence(q, k, v, g, beta, initial_state)
        return out, states[0]
    return _recurrence_unkept(q, k, v, g, beta, initial_state)


def recurrent_gated_delta_rule_steps(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `recurrent_gated_delta_rule`, but returns the state after every step, [B, T, H, Dk, Dv]
    fp32 (the speculative verify keeps each one, so acceptance can pick a step), in one pass. Both
    results may be non-contiguous views (of time-major buffers)."""
    out, states = _recurrence(q, k, v, g, beta, initial_state)
    return out, states.transpose(0, 1)


def _time_major(q, k, v, g, beta):
    """fp32 per-step operands, each unbound along T once (no per-step view ops): q scaled by
    Dk**-0.5 as [T, B, H, Dk]; k as rows [B, H, 1, Dk] and columns [B, H, Dk, 1]; v as rows
    [B, H, 1, Dv]; decay = exp(g) [B, H, 1, 1]; beta [B, H, 1, 1]. q and k feed matmuls, so they
    are made contiguous time-major (once); the rest feed elementwise ops and stay strided views."""
    scale = q.shape[-1] ** -0.5
    q = (q.float().transpose(0, 1) * scale).contiguous()
    k = k.float().transpose(0, 1).contiguous()
    v = v.float().transpose(0, 1).unsqueeze(-2)
    decay = g.float().exp().transpose(0, 1)[..., None, None]
    beta = beta.float().transpose(0, 1)[..., None, None]
    return (
        q,
        k.unsqueeze(-2).unbind(0),
        k.unsqueeze(-1).unbind(0),
        v.unbind(0),
        decay.unbind(0),
        beta.unbind(0),
    )


def _start(initial_state, q: torch.Tensor, v_dim: int) -> torch.Tensor:
    if initial_state is None:
        return torch.zeros(*q.shape[1:], v_dim, dtype=torch.float32, device=q.device)
    return initial_state.float()


def _step(state: torch.Tensor, k_row, k_col, v_row, beta_t) -> None:
    """In place: `state` (already decayed) takes step t's delta-rule update."""
    err = (v_row - k_row @ state) * beta_t  # [B, H, 1, Dv]
    # The outer product k err^T as a broadcast multiply: the same products as a K = 1 matmul, bit
    # for bit, at a fifth of its cost at these sizes.
    state.add_(k_col * err)


def _recurrence(q, k, v, g, beta, initial_state) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, T, H, Dv] in v's dtype, states [T, B, H, Dk, Dv] fp32: the state after each step)."""
    out_dtype = v.dtype
    q, k_rows, k_cols, v_rows, decay, beta = _time_major(q, k, v, g, beta)
    prev = _start(initial_state, q, v.shape[-1])
    states = torch.empty(*q.shape, v.shape[-1], dtype=torch.float32, device=q.device)
    for t, state in enumerate(states.unbind(0)):
        torch.mul(prev, decay[t], out=state)
        _step(state, k_rows[t], k_cols[t], v_rows[t], beta[t])
        prev = state
    out = (q.unsqueeze(-2) @ states).squeeze(-2)  # every step's output in one matmul
    return out.transpose(0, 1).to(out_dtype), states


def _recurrence_unkept(q, k, v, g, beta, initial_state) -> tuple[torch.Tensor, torch.Tensor]:
    """Long T without the per-step states (tests, references): one state updated in place."""
    out_dtype = v.dtype
    q, k_rows, k_cols, v_rows, decay, beta = _time_major(q, k, v, g, beta)
    state = _start(initial_state, q, v.shape[-1]).clone()
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
    for t in range(q.shape[0]):
        state.mul_(decay[t])
        _step(state, k_rows[t], k_cols[t], v_rows[t], beta[t])
        out[t] = (q[t].unsqueeze(-2) @ state).squeeze(-2)
    return out.transpose(0, 1).to(out_dtype), state
